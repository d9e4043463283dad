"""Operating a running node: while ``membus serve``/``mcp`` holds an embedded directory the CLI
works on it through the node; what the node advertises cannot be used or spoofed by others; API
keys are revoked and rotated without a restart."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from typer.testing import CliRunner, Result

from membus.cli.app import app
from membus.cli.node import (
    NODE_FILE,
    NodeInfo,
    answer_mac,
    connect,
    hosting,
    read_node_file,
    request_mac,
    write_node_file,
)
from tests.test_cli import _clean_env

__all__ = ["_clean_env"]  # fixture, used by name

ALICE = ["--agent", "alice", "--tenant", "acme"]
# the bound on a revocation reaching a running service (membus.service.auth.RELOAD_S is 1 s;
# the rest is slack for a loaded machine)
REVOKE_BOUND_S = 3.0
Node = tuple[Path, str, Path, str]  # data directory, service URL, keys file, an API key


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMBUS_")}
    return {**env, "MEMBUS_POLICY_MODE": "open"}


def cli(data: Path, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["--path", str(data), *args], input=input)


@pytest.fixture
def open_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBUS_POLICY_MODE", "open")


def _started(proc: subprocess.Popen[str], deadline_s: float = 60) -> str:
    """The URL a `serve --json` prints once it listens."""
    assert proc.stdout is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if line.strip():
            return str(orjson.loads(line)["listening"])
        assert proc.poll() is None, proc.communicate()
    raise AssertionError("serve did not start")


@pytest.fixture
def node(
    tmp_path: Path, open_mode: None
) -> Iterator[tuple[Path, str, Path, subprocess.Popen[str]]]:
    """`membus serve` on an embedded directory (its own redis-server and Edge store)."""
    keys = tmp_path / "keys.json"
    data = tmp_path / "bus"
    out = CliRunner().invoke(app, ["keys", "new", *ALICE, "--file", str(keys)])
    key = out.stdout.strip()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "membus.cli", "--json", "--path", str(data), "serve"),
            *("--port", "0", "--api-keys", str(keys)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        url = _started(proc)
        yield data, url, keys, key
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not (data / NODE_FILE).exists()  # removed on a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _accepted(url: str, key: str) -> int:
    """Until the service has read a key just added: the status of whoami with it."""
    end = time.monotonic() + REVOKE_BOUND_S
    while (status := _status(url, key)) == 401 and time.monotonic() < end:
        time.sleep(0.05)
    return status


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {key}"}).status_code


@pytest.mark.slow
def test_the_cli_works_on_a_directory_a_running_serve_holds(
    node: Node,
) -> None:
    data, url, _, key = node
    info = data / NODE_FILE
    assert stat.S_IMODE(info.stat().st_mode) == 0o600
    auth = {"Authorization": f"Bearer {key}"}
    r = httpx.post(
        f"{url}/v1/publish",
        json={"content": "printer jams on A3", "scope": "team/it"},
        headers=auth,
    )
    assert r.status_code == 201, r.text

    out = cli(data, "recall", "printer", *ALICE, "--json")  # waits for the node's writers
    assert out.exit_code == 0, out.output
    [hit] = orjson.loads(out.stdout)
    assert hit["memory"]["content"] == "printer jams on A3"
    out = cli(data, "stats", "--json")
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["memories"] == 1
    out = cli(data, "memories", "list", *ALICE, "--json")
    [memory] = orjson.loads(out.stdout)["memories"]
    out = cli(data, "memories", "get", memory["id"], *ALICE, "--json")
    assert orjson.loads(out.stdout)["content"] == "printer jams on A3"
    out = cli(data, "memories", "export", *ALICE)
    assert out.exit_code == 0 and "printer jams" in out.stdout
    out = cli(data, "memories", "get", "00000000-0000-5000-8000-000000000000", *ALICE)
    assert out.exit_code == 2 and "no memory" in out.stderr  # the node's error, typed
    out = cli(data, "tail", *ALICE, "--from", "0", "--count", "1", "--json")
    assert out.exit_code == 0, out.output
    assert orjson.loads(out.stdout)["content"] == "printer jams on A3"
    out = cli(data, "audit", "--tenant", "acme", "--json")
    assert {r["action"] for r in orjson.loads(out.stdout)} >= {"publish", "recall"}
    out = cli(data, "dlq", "list", "--tenant", "acme", "--json")
    assert out.exit_code == 0 and orjson.loads(out.stdout) == []
    out = cli(data, "keys", "list", "--signing", "--tenant", "acme", "--json")
    [signing] = orjson.loads(out.stdout)
    assert signing["agent"] == "alice" and signing["current"] and signing["certified"]

    # the node runs registered operations only, with arguments checked against their types
    node_info = NodeInfo.model_validate_json(info.read_bytes())
    for body in (
        {"op": "__import__", "kwargs": {"name": "os"}},
        {"op": "recall", "kwargs": {"agent": "alice", "tenant": "acme", "k": "five"}},
    ):
        raw = orjson.dumps(body)
        nonce = os.urandom(16).hex()
        r = httpx.post(
            f"{node_info.url}/call",
            content=raw,
            headers={
                "x-membus-nonce": nonce,
                "authorization": f"MembusNode {request_mac(node_info.token, nonce, '/call', raw)}",
            },
        )
        assert r.status_code == 400, r.text


@pytest.mark.slow
def test_a_revoked_api_key_is_refused_by_the_running_service_without_a_restart(
    node: Node,
) -> None:
    data, url, keys, fixture_key = node
    first = CliRunner().invoke(app, ["keys", "new", *ALICE, "--file", str(keys), "--json"])
    minted = orjson.loads(first.stdout)
    headers = {"Authorization": f"Bearer {minted['key']}"}
    assert _accepted(url, minted["key"]) == 200  # a new key: no restart either

    out = CliRunner().invoke(app, ["keys", "list", "--file", str(keys), "--json"])
    assert minted["id"] in [k["id"] for k in orjson.loads(out.stdout)]
    assert minted["key"] not in out.stdout  # never a secret
    out = CliRunner().invoke(app, ["keys", "revoke", minted["id"], "--file", str(keys)])
    assert out.exit_code == 0, out.output
    revoked = time.monotonic()
    while httpx.get(f"{url}/v1/whoami", headers=headers).status_code != 401:
        assert time.monotonic() - revoked < REVOKE_BOUND_S, "revoked key still accepted"
        time.sleep(0.05)

    # rotate: the old secret stops, the new one works, same identity, no restart
    out = CliRunner().invoke(app, ["keys", "list", "--file", str(keys), "--json"])
    [remaining] = orjson.loads(out.stdout)  # the fixture's key
    out = CliRunner().invoke(
        app, ["keys", "rotate", remaining["id"], "--file", str(keys), "--json"]
    )
    rotated = orjson.loads(out.stdout)
    assert (rotated["agent"], rotated["replaced"]) == ("alice", remaining["id"])
    new = {"Authorization": f"Bearer {rotated['key']}"}
    assert _accepted(url, rotated["key"]) == 200
    assert _status(url, fixture_key) == 401  # read in the same reload as the new one
    # a keys file made invalid by hand keeps the keys last read: nobody is locked out or let in
    keys.write_text("{not json")
    time.sleep(1.2)
    assert httpx.get(f"{url}/v1/whoami", headers=new).status_code == 200
    assert httpx.get(f"{url}/v1/whoami", headers=headers).status_code == 401
    assert data.exists()


@pytest.mark.slow
def test_signing_keys_rotate_and_revoke_through_the_node(
    node: Node,
) -> None:
    data, url, _, key = node
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.post(f"{url}/v1/publish", json={"content": "x", "scope": "s"}, headers=auth)
    out = cli(data, "keys", "rotate", "--signing", *ALICE, "--grace", "0", "--json")
    assert out.exit_code == 0, out.output
    states = {(k["state"], k["current"]) for k in orjson.loads(out.stdout)}
    assert states == {("valid", True), ("expired", False)}
    current = next(k["kid"] for k in orjson.loads(out.stdout) if k["current"])
    out = cli(data, "keys", "revoke", current, "--signing", *ALICE, "--json")
    assert [k["state"] for k in orjson.loads(out.stdout)] == ["revoked", "expired"]
    # the door signs the next publish with a fresh key
    assert httpx.post(f"{url}/v1/publish", json={"content": "y", "scope": "s"}, headers=auth)
    out = cli(data, "keys", "list", "--signing", "--tenant", "acme", "--json")
    assert sum(k["current"] for k in orjson.loads(out.stdout)) == 1


@pytest.mark.slow
def test_mcp_holds_the_directory_and_the_cli_goes_through_it(tmp_path: Path) -> None:
    data = tmp_path / "bus"
    proc = subprocess.Popen(
        [sys.executable, "-m", "membus.cli", "--path", str(data), "mcp", *ALICE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        end = time.monotonic() + 60
        while read_node_file(data) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "mcp did not advertise its node"
            time.sleep(0.1)
        out = cli(data, "stats", "--json")
        assert out.exit_code == 0, out.output
        assert orjson.loads(out.stdout)["memories"] == 0
        assert proc.stdin is not None
        proc.stdin.close()  # the MCP client goes away: the server stops
        assert proc.wait(timeout=30) == 0
        assert not (data / NODE_FILE).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- attacks on the node file and endpoint ----------------------------------------------------


async def _echo_call(op: str, kwargs: dict[str, Any]) -> Any:
    return {"op": op, "kwargs": kwargs}


async def _no_stream(op: str, kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    yield op


@pytest.mark.slow
@pytest.mark.anyio
async def test_the_node_endpoint_answers_only_holders_of_the_token(tmp_path: Path) -> None:
    """Anyone on this machine can reach 127.0.0.1: without the token (0600 file) a caller gets
    a 401 and no proof; a caller with a guessed token is refused the same way."""
    async with hosting(tmp_path, _echo_call, _no_stream) as info:
        assert stat.S_IMODE((tmp_path / NODE_FILE).stat().st_mode) == 0o600
        async with httpx.AsyncClient(base_url=info.url) as http:
            bare = await http.post("/call", content=b'{"op": "stats", "kwargs": {}}')
            assert bare.status_code == 401 and "x-membus-proof" not in bare.headers
            guessed = os.urandom(32).hex()
            body = b'{"op": "stats", "kwargs": {}}'
            nonce = os.urandom(16).hex()
            forged = await http.post(
                "/call",
                content=body,
                headers={
                    "x-membus-nonce": nonce,
                    "authorization": f"MembusNode {request_mac(guessed, nonce, '/call', body)}",
                },
            )
            assert forged.status_code == 401 and "x-membus-proof" not in forged.headers
            # a MAC over another body does not carry over (no replay with a new payload)
            signed = request_mac(info.token, nonce, "/call", b'{"op": "x", "kwargs": {}}')
            swapped = await http.post(
                "/call",
                content=body,
                headers={"x-membus-nonce": nonce, "authorization": f"MembusNode {signed}"},
            )
            assert swapped.status_code == 401
        async with connect(tmp_path) as node:
            assert node is not None
            assert await node.call("stats", {"a": 1}) == {"op": "stats", "kwargs": {"a": 1}}
    assert not (tmp_path / NODE_FILE).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_another_local_user_cannot_read_the_node_file() -> None:
    import shutil
    import tempfile

    # a directory everyone may traverse: it is the file's own mode that keeps others out
    open_dir = Path(tempfile.mkdtemp(dir="/tmp"))
    open_dir.chmod(0o755)
    info = NodeInfo(pid=os.getpid(), url="http://127.0.0.1:1", token=os.urandom(32).hex())
    path = write_node_file(open_dir, info)
    try:
        _probe_as_nobody(path, info)
    finally:
        shutil.rmtree(open_dir)


def _probe_as_nobody(path: Path, info: NodeInfo) -> None:
    listed = subprocess.run(["ls", str(path.parent)], user=65534, capture_output=True, text=True)
    assert NODE_FILE in listed.stdout  # it can see the file is there
    probe = subprocess.run(
        ["cat", str(path)],
        user=65534,  # nobody
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    assert info.token not in probe.stdout


def test_a_node_file_that_is_stale_or_not_ours_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that is not alive any more
    stale = NodeInfo(pid=dead.pid, url="http://127.0.0.1:9", token=os.urandom(32).hex())
    write_node_file(tmp_path, stale)
    assert read_node_file(tmp_path) is None
    live = stale.model_copy(update={"pid": os.getpid()})
    write_node_file(tmp_path, live)
    assert read_node_file(tmp_path) == live
    (tmp_path / NODE_FILE).chmod(0o644)  # readable by others: its token may be known
    assert read_node_file(tmp_path) is None
    (tmp_path / NODE_FILE).chmod(0o600)
    (tmp_path / NODE_FILE).write_text("{not json")
    assert read_node_file(tmp_path) is None


class _Impostor:
    """Whoever listens on a port a dead node left behind: answers every request with 200 and
    a plausible body, and keeps what it received."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(10)
        try:
            while True:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(2)
                    with contextlib.suppress(OSError):
                        self.received += conn.recv(65536)
                    body = b'{"result": {"memories": 0}, "pid": 1}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b"x-membus-proof: " + b"0" * 64 + b"\r\n"
                        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
        except OSError:
            return


def test_a_stale_file_does_not_lead_the_cli_to_whoever_listens_now(tmp_path: Path) -> None:
    """The node died (its pid reused by a live process) and someone else listens on its port:
    the CLI finds no proof of the token, does not talk to it, and the token never left."""
    impostor = _Impostor()
    token = os.urandom(32).hex()
    write_node_file(
        tmp_path,
        NodeInfo(pid=os.getpid(), url=f"http://127.0.0.1:{impostor.port}", token=token),
    )

    async def go() -> bool:
        async with connect(tmp_path) as node:
            return node is None

    assert anyio.run(go)
    assert impostor.received  # it was asked, and said whatever it liked
    assert token.encode() not in impostor.received
    assert answer_mac(token, "x") != "0" * 64
    impostor.sock.close()
