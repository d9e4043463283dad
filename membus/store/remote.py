"""The Edge shard served to writer processes of the same bus, over a private unix socket.

Qdrant Edge allows one process per shard, and in one process its point building and the
writers' Python share one GIL: ingest stays on one core. With ``MembusConfig.writer_processes``
the embedded runtime keeps the shard in the process that opened the bus (recall stays in
process, no hop) and runs writers in child processes; they reach the shard through this.

A writer sends an upsert as rows (id, payload, BM25 vector) and the dense vectors: payloads and
lexical vectors are computed on the writer's side, so the owner does only what must happen
where the shard is, building Edge points and updating (``EdgeStore.upsert_rows``).

Frames are a 4-byte length and a pickle, one request at a time per connection. Pickle because
both ends are this package, run by one user, and the socket sits in the bus's data directory
with mode 0600: only that user's processes can connect, and they can read the shard's files
anyway. Errors travel as ``MembusError`` values; a broken connection is ``Unavailable`` (the
writer retries, and the next call reconnects).
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from membus.embed.port import Vectors
from membus.errors import Conflict, MembusError, Unavailable
from membus.store.edge import EdgeStore
from membus.store.edge_query import rows
from membus.store.port import Hit, Memory, RecallFilter, StoreMeta, check_batch

_SERVED = frozenset(
    {
        "meta",
        "upsert_rows",
        "search",
        "search_batch",
        "get",
        "vectors",
        "browse",
        "delete",
        "count",
        "scroll",
    }
)


async def _send(stream: SocketStream, value: Any) -> None:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    await stream.send(len(body).to_bytes(4, "big") + body)


async def _receive(reader: BufferedByteReceiveStream) -> Any:
    size = int.from_bytes(await reader.receive_exactly(4), "big")
    return pickle.loads(await reader.receive_exactly(size))


def _portable(exc: Exception) -> MembusError:
    """The error as the caller should see it, and one that survives pickling."""
    if isinstance(exc, MembusError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:
            pass
    return Unavailable(f"store host: {exc!r}")


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def serve(
    store: EdgeStore,
    meta: StoreMeta,
    path: Path,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``store`` on the unix socket ``path`` until cancelled."""
    _unlink(path)
    listener = await anyio.create_unix_listener(path)
    os.chmod(path, 0o600)

    async def handle(conn: SocketStream) -> None:
        async with conn:
            reader = BufferedByteReceiveStream(conn)
            while True:
                try:
                    method, args, kwargs = await _receive(reader)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    return
                reply: tuple[str, Any]
                try:
                    if method not in _SERVED:
                        raise Unavailable(f"store host does not serve {method!r}")
                    if method == "meta":
                        reply = ("ok", meta)
                    else:
                        reply = ("ok", await getattr(store, method)(*args, **kwargs))
                except Exception as exc:
                    reply = ("err", _portable(exc))
                await _send(conn, reply)

    try:
        async with listener:
            task_status.started()
            await listener.serve(handle)
    finally:
        _unlink(path)


class RemoteStore:
    """The ``Store`` port (and ``search_batch``) on a shard another process serves."""

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._stream: SocketStream | None = None
        self._reader: BufferedByteReceiveStream | None = None
        self._lock = anyio.Lock()
        self._dim = 0
        self._lexical = False

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        async with self._lock:
            try:
                if self._stream is None:
                    self._stream = await anyio.connect_unix(self._path)
                    self._reader = BufferedByteReceiveStream(self._stream)
                assert self._reader is not None
                await _send(self._stream, (method, args, kwargs))
                status, value = await _receive(self._reader)
            except (
                OSError,
                anyio.EndOfStream,
                anyio.IncompleteRead,
                anyio.BrokenResourceError,
                anyio.ClosedResourceError,
            ) as exc:
                await self._drop()
                raise Unavailable(f"store host at {self._path} unreachable: {exc!r}") from None
        if status == "err":
            raise value
        return value

    async def _drop(self) -> None:
        if self._stream is not None:
            with anyio.CancelScope(shield=True):
                await self._stream.aclose()
        self._stream = self._reader = None

    async def open(self, meta: StoreMeta) -> None:
        served: StoreMeta = await self._call("meta")
        if (served.embedder, served.dim) != (meta.embedder, meta.dim):
            raise Conflict(
                f"the store host holds {served.embedder} (dim {served.dim}); this process "
                f"embeds with {meta.embedder} (dim {meta.dim})"
            )
        self._dim, self._lexical = served.dim, served.sparse is not None

    async def upsert(self, memories: Sequence[Memory], vectors: Vectors) -> None:
        if not memories:
            return
        check_batch(memories, vectors, self._dim)
        await self._call(
            "upsert_rows", rows(memories, self._lexical), np.ascontiguousarray(vectors)
        )

    async def search(self, vector: Vectors, flt: RecallFilter, k: int, **kw: Any) -> list[Hit]:
        found: list[Hit] = await self._call("search", vector, flt, k, **kw)
        return found

    async def search_batch(
        self, queries: Sequence[tuple[Vectors, RecallFilter]], k: int, min_score: float
    ) -> list[list[Hit]]:
        found: list[list[Hit]] = await self._call("search_batch", list(queries), k, min_score)
        return found

    async def get(self, tenant: str, ids: Sequence[str]) -> list[Memory]:
        found: list[Memory] = await self._call("get", tenant, list(ids))
        return found

    async def browse(self, flt: RecallFilter, limit: int) -> list[Memory]:
        found: list[Memory] = await self._call("browse", flt, limit)
        return found

    async def vectors(self, tenant: str, ids: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = await self._call("vectors", tenant, list(ids))
        return found

    async def delete(self, tenant: str, ids: Sequence[str]) -> int:
        return int(await self._call("delete", tenant, list(ids)))

    async def count(self, tenant: str | None = None) -> int:
        return int(await self._call("count", tenant))

    async def scroll(
        self, tenant: str, limit: int = 256, offset: str | None = None
    ) -> tuple[list[Memory], str | None]:
        page: tuple[list[Memory], str | None] = await self._call("scroll", tenant, limit, offset)
        return page

    async def maintain(self, *, busy: bool = False) -> None:
        """Index builds are the shard owner's (its idle loop)."""

    async def close(self) -> None:
        async with self._lock:
            await self._drop()
