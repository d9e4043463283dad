"""The deployment: compose.yaml, its Redis ACL users and the compose stack itself.

* The ACL file (deploy/redis/users.acl, rendered by deploy/redis/render-acl.sh exactly as the
  compose Redis does) is loaded into a real redis-server; the API side of the bus runs as the
  ``api`` user and a writer as the ``worker`` user, through publish -> writer -> recall -> feed ->
  forget -> audit, dead letters and reclaim, and Redis' own ACL log must show no refused command
  (beyond the one refusal membus expects: CONFIG GET). The ``default`` user is refused.
* compose.yaml parses; every service has a health check, telemetry is off, writers have >= 2
  replicas, and every MEMBUS_* variable it or .env.example sets is one membus/cli/settings.py reads.
* The whole stack under testcontainers, only where a Docker engine answers (skipped otherwise).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis
import yaml  # type: ignore[import-untyped]
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import membus
from membus.access.gate import OpenGate
from membus.access.policy import CasbinGate
from membus.access.signing import KeyRecord, SigningKey, keys_key, signed_fields, writer_keys
from membus.cli.settings import Settings
from membus.core.config import (
    MembusConfig,
    PolicyConfig,
    RankingConfig,
    RedisConfig,
    RetentionConfig,
    SigningConfig,
    WorkerConfig,
)
from membus.core.envelope import Event
from membus.core.keys import TenantKeys
from membus.core.redis import redis_client
from membus.runtime.host import make_gate
from membus.stream import dlq
from membus.stream.ops import XADD_MANY, xadd_many_args
from membus.writer.worker import Writer
from tests.redis_proc import RedisProcess

# every hit, however weak: relevance and min_score are tests/test_relevance.py's subject
EVERY_HIT = RankingConfig(min_score=0)

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
ACL_TEMPLATE = ROOT / "deploy" / "redis" / "users.acl"
RENDER = ROOT / "deploy" / "redis" / "render-acl.sh"
POLICY = ROOT / "policies" / "example.csv"
PASSWORDS = {"REDIS_API_PASSWORD": "api-test-pw", "REDIS_WORKER_PASSWORD": "worker-test-pw"}
# test-only: lets the test read ACL LOG; the compose file has no such user
INSPECTOR = "user inspector on >inspect-pw ~* &* +@all\n"
# erasure asks CONFIG GET appendonly first and goes on when refused; nothing else may be refused
EXPECTED_REFUSALS = {"config|get"}
FAST = WorkerConfig(
    min_idle_ms=200, reclaim_every_s=0.2, max_deliveries=2, block_ms=50, tenants_refresh_s=0.1
)


def render_acl(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The same script the compose Redis runs before it starts."""
    return subprocess.run(
        ["sh", str(RENDER), str(ACL_TEMPLATE), str(out)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        check=False,
    )


class AclRedisProcess(RedisProcess):
    """A RedisProcess started with ``--aclfile``: readiness is checked as the inspector user,
    since the ``default`` user is off."""

    def __init__(self, directory: Path, aclfile: Path) -> None:
        super().__init__(directory, appendfsync="everysec")
        self.aclfile = aclfile

    def user_url(self, user: str, password: str) -> str:
        return f"redis://{user}:{password}@127.0.0.1:{self.port}/0"

    def start(self) -> AclRedisProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "redis-server"
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.appendfsync,
            "--save",
            "",
            "--aclfile",
            str(self.aclfile),
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise AssertionError(f"redis-server refused the ACL file:\n{log[-2000:]}")
            try:
                with self.client() as c:
                    c.ping()
                return self
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(0.02)
        raise AssertionError(f"redis-server on port {self.port} did not start")

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, username="inspector", password="inspect-pw", decode_responses=True
        )


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedisProcess]:
    aclfile = tmp_path / "users.acl"
    done = render_acl(aclfile, **PASSWORDS)
    assert done.returncode == 0, done.stderr
    aclfile.write_text(aclfile.read_text() + INSPECTOR)
    proc = AclRedisProcess(tmp_path / "redis", aclfile).start()
    yield proc
    proc.stop()


def refusals(proc: AclRedisProcess) -> dict[str, str]:
    """Every command or key Redis refused since the last reset, as ``{object: username}``."""
    with proc.client() as c:
        entries: list[dict[str, Any]] = c.acl_log()
    return {str(e["object"]): str(e["username"]) for e in entries}


def test_render_acl_refuses_missing_or_url_unsafe_passwords(tmp_path: Path) -> None:
    """A password that would break the redis:// URL (or the sed substitution) stops Redis from
    starting rather than producing a half-rendered ACL file."""
    for bad in ("", "with/slash", "a b", "p@ss"):
        done = render_acl(tmp_path / "u.acl", REDIS_API_PASSWORD=bad, REDIS_WORKER_PASSWORD="w")
        assert done.returncode != 0, bad
        assert "REDIS_API_PASSWORD" in done.stderr
    assert render_acl(tmp_path / "u.acl", **PASSWORDS).returncode == 0
    text = (tmp_path / "u.acl").read_text()
    # placeholders replaced, comments dropped (%R~ is a key permission, not a placeholder)
    assert not re.search(r"%[A-Z_]+%", text) and "#" not in text
    assert (tmp_path / "u.acl").stat().st_mode & 0o077 == 0  # secrets: owner-only


@pytest.mark.slow
def test_default_user_is_refused_and_users_are_fenced(acl_redis: AclRedisProcess) -> None:
    """No anonymous access; neither user reaches keys outside membus:* nor administration; only
    the api user may start an AOF rewrite (erasure) and announce policy changes."""
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis.port, username="default", password="").ping()
    api = redis.Redis.from_url(acl_redis.user_url("api", PASSWORDS["REDIS_API_PASSWORD"]))
    worker = redis.Redis.from_url(acl_redis.user_url("worker", PASSWORDS["REDIS_WORKER_PASSWORD"]))
    refused: list[Callable[[redis.Redis], object]] = [
        lambda c: c.get("other:key"),
        lambda c: c.keys("*"),
        lambda c: c.flushall(),
        lambda c: c.config_get("requirepass"),
        lambda c: c.acl_list(),
        lambda c: c.publish("elsewhere", "x"),
        lambda c: c.script_flush(),
    ]
    with api, worker:
        assert api.ping() and worker.ping()
        for client in (api, worker):
            for call in refused:
                with pytest.raises(redis.exceptions.NoPermissionError):
                    call(client)
        with pytest.raises(redis.exceptions.NoPermissionError):
            worker.publish("membus:policy:changed", "x")
        with pytest.raises(redis.exceptions.NoPermissionError):
            api.xautoclaim("membus:{t}:events", "writers", "c", 0)


@pytest.mark.slow
@pytest.mark.anyio
async def test_api_and_worker_users_run_the_whole_flow(
    acl_redis: AclRedisProcess, tmp_path: Path
) -> None:
    """The API side (bus, audit, erasure, DLQ tools, policy announcements) as ``api`` and a writer
    with its own shared-policy gate as ``worker``: every step works and Redis refused nothing."""
    api_url = acl_redis.user_url("api", PASSWORDS["REDIS_API_PASSWORD"])
    worker_url = acl_redis.user_url("worker", PASSWORDS["REDIS_WORKER_PASSWORD"])
    config = MembusConfig(
        redis=RedisConfig(url=api_url),
        worker=FAST,
        writers=0,  # the writer below runs as the worker user
        policy=PolicyConfig(file=POLICY, shared=True, resync_s=1.0),
        ranking=EVERY_HIT,
    )
    worker_redis = redis_client(worker_url)
    stop = anyio.Event()
    try:
        async with membus.open(tmp_path / "api", config) as bus, anyio.create_task_group() as tg:
            gate = await make_gate(PolicyConfig(shared=True, resync_s=1.0), worker_redis)
            writer = Writer(
                worker_redis,
                bus.store,  # one Edge store in this process stands in for the shared Qdrant
                bus.embedder,
                FAST,
                consumer="w1",
                retention=RetentionConfig(every_s=0.1),
                gate=gate,
            )
            await tg.start(gate.watch)  # type: ignore[attr-defined]
            tg.start_soon(writer.run, stop)

            carol = bus.agent("carol", "acme")
            scope = "team/support-leads/notes"
            await carol.publish("carol prefers tea on release days", scope, subject="carol")
            await bus.redis.xadd(TenantKeys("acme").events, {"e": "{not json"})  # poison
            await bus.drain(timeout_s=20)

            # working=True: the stream tail too (XREVRANGE, XINFO); recall bumps access (HINCRBY)
            hits = await carol.recall("tea release", working=True)
            assert [h.memory.content for h in hits] == ["carol prefers tea on release days"]
            assert (await carol.access([hits[0].memory.id]))[hits[0].memory.id].count == 1
            with anyio.fail_after(5):
                async for change in carol.subscribe([scope], start="0"):
                    assert change.op == "upsert"
                    break

            dead = await dlq.list_dead(bus.redis, "acme")
            assert [d.reason for d in dead] == ["invalid"]
            assert len(await dlq.replay(bus.redis, "acme", None)) == 1
            await bus.drain(timeout_s=20)
            assert await dlq.drop(bus.redis, "acme", None) == 1
            assert await writer.reclaim() == 0  # XAUTOCLAIM + XPENDING as the worker
            await writer.trim()

            assert isinstance(bus.gate, CasbinGate)
            await bus.gate.reload()  # and `membus policy reload` announces as api
            assert bus.gate.watcher is not None
            await bus.gate.watcher.announce("test")

            report = await carol.forget(subject="carol")
            assert report.memories == 1
            assert report.aof_rewrite in ("started", "in_progress")
            assert await carol.recall("tea release") == []
            await bus.audit.flush()
            actions = {r.action for r in await bus.audit.query("acme")}
            assert {"publish", "recall", "forget"} <= actions
            stop.set()  # the writer finishes its batch; the policy watch runs until cancelled
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    finally:
        await worker_redis.aclose()
    assert writer.processed >= 1
    assert set(refusals(acl_redis)) <= EXPECTED_REFUSALS, refusals(acl_redis)


@pytest.mark.slow
@pytest.mark.anyio
async def test_no_shipped_credential_can_forge_an_event_or_replace_a_key(
    acl_redis: AclRedisProcess, tmp_path: Path
) -> None:
    """Each shipped Redis credential, used as an attacker would use a leaked password, tries to
    sign an event as carol and to replace her key. The registry it can read holds public keys
    only. ``worker``: every write to the registry and every XADD to an events stream (directly or
    from a script) is refused by Redis. ``api``: Redis lets it write the registry (the door
    registers its public keys there), but a key it registers, or writes over carol's, carries no
    certificate of the door's authority, so the writer (pinned to that authority as a compose
    worker is by MEMBUS_SIGNING_AUTHORITY) parks every such event; carol's real events, before
    and after the tampering, are the only memories."""
    api_url = acl_redis.user_url("api", PASSWORDS["REDIS_API_PASSWORD"])
    worker_url = acl_redis.user_url("worker", PASSWORDS["REDIS_WORKER_PASSWORD"])
    # the open mode: this test is about signatures, not grants (carol writes a shared scope)
    config = MembusConfig(
        redis=RedisConfig(url=api_url),
        worker=FAST,
        writers=0,
        policy=PolicyConfig(mode="open"),
        ranking=EVERY_HIT,
    )
    worker_redis = redis_client(worker_url)
    attacker = Ed25519PrivateKey.generate()
    registry, events = keys_key("acme"), TenantKeys("acme").events
    stop = anyio.Event()
    try:
        async with membus.open(tmp_path / "api", config) as bus, anyio.create_task_group() as tg:
            # the master lives in the door's data directory, owner-only, never in Redis
            master = tmp_path / "api" / "signing.key"
            assert bus.keys.authority is not None and master.stat().st_mode & 0o077 == 0
            pinned = SigningConfig(authority=bus.keys.authority.hex())
            writer = Writer(
                worker_redis,
                bus.store,
                bus.embedder,
                FAST,
                consumer="w1",
                gate=OpenGate(),
                keys=writer_keys(worker_redis, pinned),
            )
            tg.start_soon(writer.run, stop)
            carol = bus.agent("carol", "acme")
            await carol.publish("carol's real note before", "team/a")
            await bus.drain(timeout_s=20)  # committed before the attack replaces its key
            kid = (await bus.keys.current("acme", "carol")).kid

            def forged(content: str, key_id: str) -> dict[Any, Any]:
                event = Event.build(tenant="acme", agent="carol", scope="team/a", content=content)
                return signed_fields(event, SigningKey("acme", "carol", key_id, attacker))

            public = attacker.public_key().public_bytes_raw()
            for name, client in (("worker", worker_redis), ("api", bus.redis)):
                stored: dict[str, str] = await client.hgetall(registry)  # type: ignore[assignment]
                records = [orjson.loads(v) for f, v in stored.items() if f.startswith("k:")]
                assert records and all(set(r) == {"a", "p", "g", "c", "x", "r"} for r in records)
                assert master.read_text().strip() not in repr(stored)
                real = KeyRecord.from_json(kid, stored[f"k:{kid}"])
                own_kid = "ab" * 8 if name == "worker" else "cd" * 8
                # a key pair of the attacker's, under a new kid and over carol's current kid
                for key_id in (own_kid, kid):
                    record = KeyRecord(key_id, "carol", public, time.time(), cert=real.cert)
                    if name == "worker":
                        with pytest.raises(redis.exceptions.NoPermissionError):
                            await client.hset(registry, f"k:{key_id}", record.to_json())
                        with pytest.raises(redis.exceptions.NoPermissionError):
                            await client.xadd(events, forged("forged by worker", key_id))
                    else:
                        await client.hset(registry, f"k:{key_id}", record.to_json())
                        await client.xadd(events, forged(f"forged by api as {key_id}", key_id))
                if name == "worker":
                    with pytest.raises(redis.exceptions.NoPermissionError):
                        await client.hdel(registry, f"k:{kid}")
                    with pytest.raises(redis.exceptions.NoPermissionError):
                        await client.hset(registry, "c:carol", own_kid)
                    # a script's commands are checked too: EVAL is no way to publish
                    args = xadd_many_args([forged("forged by worker via eval", kid)])[0]
                    with pytest.raises(redis.exceptions.ResponseError, match="can't access"):
                        await client.eval(XADD_MANY, 1, events, *args)  # type: ignore[misc]
            # the door cannot derive the overwritten key either: once its cache of the current
            # key expires (1 s, skipped here) it rotates and goes on
            bus.keys._forget("acme")
            await carol.publish("carol's real note after", "team/a")
            await bus.drain(timeout_s=20)
            dead = await dlq.list_dead(bus.redis, "acme")
            reasons = {str((d.event or {}).get("content")): d.reason for d in dead}
            assert len(dead) == len(reasons) == 2
            assert reasons["forged by api as " + "cd" * 8] == "uncertified_key"
            # a writer still caching carol's real record (1 s) sees a bad signature instead
            assert reasons[f"forged by api as {kid}"] in ("uncertified_key", "bad_signature")
            hits = await carol.recall("note forged carol", k=10)
            assert sorted(h.memory.content for h in hits) == [
                "carol's real note after",
                "carol's real note before",
            ]
            stop.set()
            await anyio.sleep(0.3)
            tg.cancel_scope.cancel()
    finally:
        await worker_redis.aclose()
    assert {user for user in refusals(acl_redis).values()} == {"worker"}


@pytest.mark.slow
def test_worker_healthcheck_runs_as_the_worker_user(
    acl_redis: AclRedisProcess, tmp_path: Path
) -> None:
    """compose's worker health check, ``membus stats --json``, passes with the worker's rights."""
    env = {
        **os.environ,
        "MEMBUS_REDIS_URL": acl_redis.user_url("worker", PASSWORDS["REDIS_WORKER_PASSWORD"]),
        "MEMBUS_PATH": str(tmp_path / "stats"),
    }
    membus_cli = Path(sys.executable).with_name("membus")
    done = subprocess.run(
        [str(membus_cli), "stats", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert refusals(acl_redis) == {}


# -- compose.yaml -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def membus_vars(env: dict[str, Any] | list[str]) -> set[str]:
    names = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
    return {n for n in names if n.startswith("MEMBUS_")}


def settings_vars() -> set[str]:
    """Every variable membus/cli/settings.py reads: flat fields and ``__``-nested model fields."""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"MEMBUS_{name.upper()}")
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            names |= {f"MEMBUS_{name.upper()}__{s.upper()}" for s in sub.model_fields}
    return names


def test_compose_services_have_health_checks_replicas_and_no_telemetry() -> None:
    """The issue's requirements on the stack itself."""
    services = compose()["services"]
    assert {"redis", "qdrant", "api", "worker"} <= set(services)
    for name, svc in services.items():
        assert "healthcheck" in svc and svc["healthcheck"].get("test"), name
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert str(services["qdrant"]["environment"]["QDRANT__TELEMETRY_DISABLED"]).lower() == "true"
    # one image, different commands
    images = {services[s]["image"] for s in ("api", "worker")}
    assert len(images) == 1
    assert services["api"]["command"][0] == "serve" and services["worker"]["command"] == ["worker"]
    # Redis: AOF on, the ACL file in force, reachable only with a user
    redis_cmd = " ".join(map(str, services["redis"]["command"]))
    assert "--appendonly yes" in redis_cmd and "--aclfile" in redis_cmd
    assert "redis://api:" in services["api"]["environment"]["MEMBUS_REDIS_URL"]
    assert "redis://worker:" in services["worker"]["environment"]["MEMBUS_REDIS_URL"]


def test_prometheus_scrapes_metrics_with_a_metrics_only_key_from_a_secret_file() -> None:
    """/metrics answers only operator and metrics-only keys, so compose's Prometheus presents
    one: as a Bearer token read from a compose secret file (credentials_file), never inline in
    its config or the environment, from a host directory git ignores and the image build
    context excludes; compose's own instructions mint a metrics-only key for it."""
    services = compose()["services"]
    prom = services["prometheus"]
    assert prom["profiles"] == ["metrics"]  # a plain `up` does not need the secret file
    assert prom["secrets"] == ["membus_metrics_key"]
    assert not prom.get("environment"), "the key must not travel in the environment"
    secret = Path(compose()["secrets"]["membus_metrics_key"]["file"])
    mount = next(v for v in prom["volumes"] if v.endswith("/etc/prometheus/prometheus.yml:ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8080"]}]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": "/run/secrets/membus_metrics_key",
    }
    # the secret's host file: ignored by git, outside the image's build context
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(secret)], cwd=ROOT, check=False
    ).returncode
    assert ignored == 0, f"{secret} is not git-ignored"
    assert secret.parts[0] == "deploy"
    assert "deploy" in (ROOT / ".dockerignore").read_text().split()
    assert "--metrics-only > deploy/secrets/metrics.key" in COMPOSE.read_text()
    # the ports Prometheus publishes stay on the host's loopback
    assert all(str(p).startswith("127.0.0.1:") for p in prom["ports"])


def test_every_membus_variable_is_one_settings_reads() -> None:
    """A typo in compose.yaml or .env.example (MEMBUS_STORE_UR) would be silently ignored."""
    known = settings_vars()
    for name, svc in compose()["services"].items():
        unknown = membus_vars(svc.get("environment", {})) - known
        assert not unknown, (name, unknown)
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(MEMBUS_[A-Z0-9_]+)=", example, re.MULTILINE))
    assert listed, "no MEMBUS_* variables found in .env.example"
    assert not listed - known, listed - known
    # and the compose wiring overrides only variables the example documents
    for svc in compose()["services"].values():
        assert membus_vars(svc.get("environment", {})) <= listed


# -- the stack under Docker ----------------------------------------------------------------------


def docker_engine() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


@pytest.mark.docker
@pytest.mark.slow
def test_compose_stack_publishes_and_recalls_over_http(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's path: mint a key in the api service, ``docker compose up`` (every service
    turns healthy), an agent publishes over HTTP, the writers commit it, recall finds it."""
    if not docker_engine():
        pytest.skip("no Docker engine answers here")
    from testcontainers.compose import DockerCompose

    # its own project: never touches the volumes of a stack a developer runs from this checkout
    monkeypatch.setenv("COMPOSE_PROJECT_NAME", f"membus-test-{os.getpid()}")
    minted = subprocess.run(
        [
            "docker",
            "compose",
            "run",
            "--rm",
            "--no-deps",
            "--build",
            "api",
            "keys",
            "new",
            "--agent",
            "carol",
            "--tenant",
            "acme",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert minted.returncode == 0, minted.stderr
    key = minted.stdout.strip().splitlines()[-1]
    with DockerCompose(ROOT, compose_file_name="compose.yaml", wait=True) as stack:
        port = stack.get_service_port("api", 8080)
        with membus.SyncClient(f"http://127.0.0.1:{port}", key) as agent:
            agent.publish("deployed via compose", "agent/carol/notes")
            deadline = time.monotonic() + 60
            while not agent.recall("deployed compose"):
                assert time.monotonic() < deadline, "the writers never committed the event"
                time.sleep(0.5)


def test_compose_refuses_to_start_a_worker_that_trusts_the_key_registry() -> None:
    """An unpinned worker accepts any key a leaked api password writes into Redis: compose's
    worker must name the authority, or compose refuses to start it (``${VAR:?…}``)."""
    env = compose()["services"]["worker"]["environment"]
    assert str(env["MEMBUS_SIGNING_AUTHORITY"]).startswith("${MEMBUS_SIGNING_AUTHORITY:?")
