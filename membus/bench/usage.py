"""What a bench run costs the machine: CPU seconds and resident memory summed over this process
and every process it started (the embedded redis-server, writer processes), and disk as blocks
really allocated.

Read from ``/proc`` (Linux, where the bench runs); elsewhere the figures are this process's
alone. CPU is user + system time, so a process waiting on another costs nothing; a process
that exits between two snapshots takes its last CPU seconds with it, which is why phases are
measured while the bus is open.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _stat(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:  # gone meanwhile, or no /proc
        return None
    # the command name (field 2) may hold spaces: split after its closing parenthesis
    return text[text.rindex(")") + 2 :].split()


def family(root: int | None = None) -> list[int]:
    """``root`` (default: this process) and all its descendants that are alive."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    if _PROC.is_dir():
        for entry in _PROC.iterdir():
            if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # user + system, summed over the processes
    rss_bytes: int
    host_rss_bytes: int  # this process alone


def snapshot() -> Usage:
    """CPU so far and resident memory now, of this process and its descendants."""
    me = os.getpid()
    cpu, rss, host = 0.0, 0, 0
    for pid in family(me):
        fields = _stat(pid)
        if fields is None:
            continue
        # after "pid (comm) ": state ppid ... utime is field 14 of stat, 12th here (0-based 11)
        cpu += (int(fields[11]) + int(fields[12])) / _TICK
        try:
            pages = int((_PROC / str(pid) / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pages = 0
        rss += pages * _PAGE
        if pid == me:
            host = pages * _PAGE
    if not _PROC.is_dir():  # not Linux: this process only
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu, rss = ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024
        host = rss
    return Usage(cpu, rss, host)


def disk(path: Path) -> tuple[int, int]:
    """(bytes allocated on disk, apparent size) of everything under ``path``: Qdrant's and
    Redis's files may be sparse or preallocated, so the two differ."""
    real = apparent = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            real += st.st_blocks * 512
            apparent += st.st_size
    return real, apparent


def mb(n: float) -> float:
    return round(n / 1e6, 1)
