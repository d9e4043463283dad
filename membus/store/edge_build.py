"""The Edge HNSW build, out of process: the files of a store's shard generations and the child.

``EdgeShard.optimize()`` holds the GIL for its whole run (seconds at 20k points, a minute at
100k), so a build in the serving process answers nothing meanwhile. ``EdgeStore.optimize``
instead copies the shard into a new generation directory (``shard-<n>``) while writes are
paused (reads go on: they change no file), has a child process (this module's ``main``) build
the index there, loads the result, replays onto it the updates made since the copy, and makes it
current. Which directory is current is the one name in the ``current`` file, replaced atomically
(tmp + rename); a store without that file is on ``shard``, as every store was before builds moved
out. A crash at any instant leaves the pointer naming a complete shard that holds every
acknowledged write: before the switch the old shard is current and took every write; the switch
happens under the store's lock after the replay, and later writes go to the new shard only.
``clean`` removes what a crash left (a half-built generation, the old one) at the next open.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio

from membus.core.children import die_with_parent
from membus.errors import Unavailable

POINTER = "current"
FIRST = "shard"  # the generation of a store created before out-of-process builds, and of a new one
_PREFIX = "shard-"
_CHUNK = 1 << 20  # bytes a copy reads at once where the kernel cannot copy
# copy_file_range's "not here": across file systems (older kernels), unsupported, not allowed
_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}
)


def current(root: Path) -> Path:
    """The shard directory the store serves."""
    pointer = root / POINTER
    return root / (pointer.read_text().strip() if pointer.exists() else FIRST)


def clean(root: Path) -> list[str]:
    """Remove every shard generation but the current one (a build a crash interrupted, an old
    generation not yet deleted) and a pointer left half-written; the names removed."""
    keep = current(root).name
    gone: list[str] = []
    for entry in root.iterdir():
        stale_gen = entry.is_dir() and (entry.name == FIRST or entry.name.startswith(_PREFIX))
        if (stale_gen and entry.name != keep) or entry.name == f"{POINTER}.tmp":
            _remove(entry)
            gone.append(entry.name)
    return gone


def next_generation(root: Path) -> Path:
    """A fresh directory name for the next build, after every generation on disk."""
    gens = [int(p.name[len(_PREFIX) :]) for p in root.glob(f"{_PREFIX}*") if _numbered(p.name)]
    return root / f"{_PREFIX}{max(gens, default=0) + 1}"


def _numbered(name: str) -> bool:
    return name[len(_PREFIX) :].isdigit()


def copy(src: Path, dst: Path) -> None:
    """Copy a closed or flushed shard with no write in flight (the caller pauses writes),
    keeping its files sparse. Edge preallocates files (WAL segments, vector chunks) as holes; a
    plain copy wrote every hole out as zeros, which took longer while writes waited (an unbuilt
    20k-point shard: 801 ms against 543, a script outside the repo) and stayed on disk in the
    generation served next (``membus bench --workload one-scope``: 225 MB allocated after the
    20k run against 178, 655 against 621 at 100k)."""
    _remove(dst)
    shutil.copytree(src, dst, copy_function=_copy_sparse)


def _copy_sparse(src: str, dst: str) -> str:
    """``shutil.copy2`` that copies the data of ``src`` and leaves its holes holes."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        for start, end in _data(fin.fileno(), size):
            _copy_range(fin.fileno(), fout.fileno(), start, end)
        os.ftruncate(fout.fileno(), size)  # a hole at the end, too
    shutil.copystat(src, dst)
    return dst


def _data(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) of each run of data in a file, its holes left out; the whole file where
    the file system cannot tell them apart."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # SEEK_DATA unsupported: copy every byte
                yield pos, size
            return  # ENXIO: a hole from ``pos`` to the end
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        pos = end


def _copy_range(fin: int, fout: int, start: int, end: int) -> None:
    """Copy bytes ``start:end`` of ``fin`` to the same offsets of ``fout``, in the kernel where
    it can (``copy_file_range``): one call per run of data, with the GIL released throughout,
    instead of a read and a write per MiB through user space, each taking the GIL back from
    recalls that hold it (Edge holds it through a query). Writes wait while the shard copies."""
    while start < end:
        try:
            done = os.copy_file_range(fin, fout, end - start, start, start)
        except OSError as exc:
            if exc.errno not in _NO_KERNEL_COPY:
                raise
            break  # not between these files or on this kernel: read and write
        if done == 0:  # the file shrank meanwhile: writes are paused, so never
            return
        start += done
    while start < end:
        chunk = os.pread(fin, min(end - start, _CHUNK), start)
        if not chunk:
            return
        os.pwrite(fout, chunk, start)
        start += len(chunk)


def switch(root: Path, generation: Path) -> None:
    """Make ``generation`` current, atomically and durably: a crash leaves the old or the new."""
    tmp = root / f"{POINTER}.tmp"
    with tmp.open("w") as f:
        f.write(generation.name)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(root / POINTER)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself
    finally:
        os.close(fd)


def discard(path: Path) -> None:
    """Delete a generation no longer served (a failed build, the one a switch replaced)."""
    _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


async def build(path: Path) -> None:
    """Build the index of the shard copy at ``path`` in a child process; ``Unavailable`` when
    the child fails (killed, out of disk): the copy is then worthless, the served shard intact."""
    cmd = [sys.executable, "-m", "membus.store.edge_build", str(path), str(os.getpid())]
    result = await anyio.run_process(cmd, check=False)
    if result.returncode != 0:
        tail = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise Unavailable(
            f"index build of {path} failed (exit {result.returncode}): {' | '.join(tail)}; "
            "the store keeps serving its current shard; check free disk and memory, then run "
            "`membus optimize` again"
        )


def main(argv: list[str]) -> int:
    """The child: load the copy, build its indexes, flush, close. Runs niced: the serving
    process shares the cores and its recalls come first."""
    import qdrant_edge as q

    if len(argv) != 2:
        sys.stderr.write("usage: python -m membus.store.edge_build SHARD_DIR PARENT_PID\n")
        return 2
    _die_with_parent(int(argv[1]))
    os.nice(10)
    shard = q.EdgeShard.load(argv[0])
    shard.optimize()
    shard.flush()
    shard.close()
    return 0


def _die_with_parent(parent: int) -> None:
    """A build that outlives its store's process would go on writing into a generation the next
    open removes, and a later build may name anew: the kernel kills it with its parent."""
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        raise SystemExit(1)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
