"""A real Redis Cluster for tests: N masters on local ports, each in its own directory.

Built the way an operator builds one (``redis-server --cluster-enabled yes`` per node, then
``redis-cli --cluster create``), so the client sees real MOVED routing, slot ownership and
CROSSSLOT errors. Every node is started before anything can fail, and ``stop`` kills whatever
was started, so a failed start leaves no process behind.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import redis

BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000 (the cluster bus)


def binaries() -> tuple[str, str] | None:
    """(redis-server, redis-cli), or None when either is missing (the tests then skip)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


def free_cluster_ports(n: int) -> list[int]:
    """``n`` ports whose cluster-bus twin (port + 10000) is free as well.

    The sockets are held until all are chosen, so the kernel hands out distinct ports.
    """
    ports: list[int] = []
    with ExitStack() as stack:
        while len(ports) < n:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port + BUS_OFFSET > 65_535:
                continue
            bus = stack.enter_context(socket.socket())
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
            ports.append(port)
    return ports


class ClusterProcess:
    """``masters`` redis-server nodes with AOF on, joined into one cluster (no replicas)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        found = binaries()
        if found is None:
            raise FileNotFoundError("redis-server and redis-cli are needed for a cluster")
        self.server, self.cli = found
        self.directory = directory
        self.masters = masters
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """A startup node; the cluster client discovers the rest."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout_s: float = 20.0) -> ClusterProcess:
        try:
            self._start(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout_s: float) -> None:
        self.ports = free_cluster_ports(self.masters)
        for port in self.ports:
            node = self.directory / str(port)
            node.mkdir(parents=True, exist_ok=True)
            args = [
                self.server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(node),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node / "nodes.conf"),
                "--cluster-node-timeout",
                "5000",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--logfile",
                str(node / "redis.log"),
            ]
            self.procs.append(
                subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + timeout_s
        for port in self.ports:
            self._wait(port, deadline, lambda c: bool(c.ping()))
        create = [
            self.cli,
            "--cluster",
            "create",
            *[f"127.0.0.1:{p}" for p in self.ports],
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        for port in self.ports:
            self._wait(port, deadline, self._ready)

    def _ready(self, client: redis.Redis) -> bool:
        """This node says the cluster is ok and knows every node and every slot."""
        info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
        fields = {str(k): str(v) for k, v in dict(info).items()}
        return (
            fields.get("cluster_state") == "ok"
            and fields.get("cluster_slots_assigned") == "16384"
            and fields.get("cluster_known_nodes") == str(self.masters)
        )

    def _wait(self, port: int, deadline: float, ready: Callable[[redis.Redis], bool]) -> None:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            while True:
                try:
                    if ready(client):
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster node on port {port} not ready in time")
                time.sleep(0.05)
        finally:
            client.close()

    def node_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot (asked of the cluster itself)."""
        client = redis.Redis(port=self.ports[0], decode_responses=True)
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        finally:
            client.close()
        raise LookupError(f"no node owns the slot of {key!r}")

    def stop(self) -> None:
        """SIGTERM every node (SIGKILL after 10 s); safe to call twice or after a failed start."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
