"""Open an Edge store, write, and build its index while writing on, halting at one step of the
build so that a test can SIGKILL this process exactly there (crash-safety tests).

    python -m tests.edge_build_proc STORE_PATH STEP

STEP is one of ``copy`` (the copy made, writes still paused), ``build`` (the child building),
``switch`` (the new generation current, the old one not yet closed nor deleted) and ``discard``
(the old generation about to be deleted). Prints ``ack ID`` once a write of ID has returned, and
``at STEP`` when halted there.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import anyio

from membus.store import edge_build
from membus.store.edge import EdgeStore
from tests.conformance import META, mem, rows, unit


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _halt(step: str) -> None:
    _say(f"at {step}")
    time.sleep(600)  # the test kills us here


async def main(path: Path, step: str) -> None:
    real: dict[str, Any] = {
        name: getattr(edge_build, name) for name in ("copy", "build", "switch", "discard")
    }

    def copy(src: Path, dst: Path) -> None:
        real["copy"](src, dst)
        if step == "copy":
            _halt(step)

    async def build(target: Path) -> None:
        if step == "build":
            async with anyio.create_task_group() as tg:
                tg.start_soon(real["build"], target)
                await anyio.sleep(0.5)  # the child has started
                await anyio.to_thread.run_sync(_halt, step)
        await real["build"](target)

    def switch(root: Path, target: Path) -> None:
        real["switch"](root, target)
        if step == "switch":
            _halt(step)

    def discard(target: Path) -> None:
        if step == "discard":
            _halt(step)
        real["discard"](target)

    for name, fn in (("copy", copy), ("build", build), ("switch", switch), ("discard", discard)):
        setattr(edge_build, name, fn)

    store = EdgeStore(path)
    await store.open(META)
    first = [mem(i) for i in range(200)]
    await store.upsert(first, rows([unit(i % 8) for i in range(len(first))]))
    for m in first:
        _say(f"ack {m.id}")

    async def write_on() -> None:
        n = 1000
        while True:
            batch = [mem(i) for i in range(n, n + 5)]
            await store.upsert(batch, rows([unit(i % 8) for i in range(len(batch))]))
            for m in batch:
                _say(f"ack {m.id}")
            n += 5
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_on)
        await anyio.sleep(0.2)
        await store.optimize()
        tg.cancel_scope.cancel()
    _say("at end")  # STEP was never reached: the test fails on this


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), sys.argv[2])
