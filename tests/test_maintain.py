"""The runtime's housekeeping loop (``membus.runtime.host.maintain_loop``): when it lets the store
build its index. Builds wait for the writers to pause, but not forever: under writing that never
pauses, the points not yet indexed are searched exactly and every recall slows with their number.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import cast

import anyio
import pytest

import membus
from membus.core.config import MembusConfig, PolicyConfig, StoreConfig
from membus.runtime.host import maintain_loop
from membus.store import edge_build
from membus.store.port import Store


class CountingStore:
    """The one store call the loop makes, counted: ``calls`` let the store build at its usual
    bound, ``busy_calls`` only at its bound under load."""

    def __init__(self) -> None:
        self.calls = 0
        self.busy_calls = 0

    async def maintain(self, *, busy: bool = False) -> None:
        if busy:
            self.busy_calls += 1
        else:
            self.calls += 1


async def _run_for(seconds: float, activity: Callable[[], int], **timing: float) -> CountingStore:
    store = CountingStore()
    stop = anyio.Event()
    loop = partial(maintain_loop, cast(Store, store), [], stop, activity, **timing)
    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        await anyio.sleep(seconds)
        stop.set()
    return store


def _always_writing() -> Callable[[], int]:
    count = itertools.count()
    return lambda: next(count)


@pytest.mark.anyio
async def test_writing_without_a_pause_still_gets_a_build_once_due() -> None:
    store = await _run_for(1.0, _always_writing(), every_s=0.01, build_under_load_s=0.3)
    assert 1 <= store.calls <= 4  # about every 0.3 s, not every round


@pytest.mark.anyio
async def test_writing_does_not_trigger_a_build_before_it_is_due() -> None:
    store = await _run_for(0.5, _always_writing(), every_s=0.01, build_under_load_s=60.0)
    assert store.calls == 0


@pytest.mark.anyio
async def test_writing_lets_the_store_build_every_round_at_its_bound_under_load() -> None:
    """Protects: under writing that never pauses, a build came only every
    ``build_under_load_s`` (five minutes), so at 1,000 events/s up to 300,000 points were
    searched exactly before one. Every round now asks the store whether its bound under load
    is reached."""
    store = await _run_for(0.5, _always_writing(), every_s=0.01, build_under_load_s=60.0)
    assert store.busy_calls >= 10


@pytest.mark.anyio
async def test_quiet_writers_are_not_asked_for_a_busy_build() -> None:
    store = await _run_for(0.5, lambda: 7, every_s=0.01, quiet_s=0.2, build_under_load_s=60.0)
    assert store.busy_calls <= 1  # the first round sees the count move from nothing


@pytest.mark.anyio
async def test_quiet_writers_get_a_build_after_the_pause() -> None:
    def quiet() -> int:
        return 7

    store = await _run_for(0.5, quiet, every_s=0.01, quiet_s=0.2, build_under_load_s=60.0)
    assert store.calls >= 1


def test_the_load_interval_is_configured_and_checked() -> None:
    assert StoreConfig().build_under_load_s == 300.0
    with pytest.raises(ValueError, match="build_under_load_s"):
        StoreConfig(build_under_load_s=0)


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize(
    "store",
    [
        pytest.param(StoreConfig(optimize_every=50, build_under_load_s=1.0), id="interval"),
        # the interval never comes: the bound under load (twice optimize_every) builds
        pytest.param(StoreConfig(optimize_every=25, build_under_load_s=600.0), id="bound"),
    ],
)
async def test_an_embedded_bus_under_steady_writing_builds_its_index(
    tmp_path: Path, store: StoreConfig
) -> None:
    """End to end, with a real Redis and Edge: writing that never pauses for the quiet period
    still gets its points indexed, once ``build_under_load_s`` has passed or once twice
    ``optimize_every`` wait, whichever comes first."""
    config = MembusConfig(policy=PolicyConfig(mode="open"), store=store)
    async with membus.open(tmp_path, config) as bus:
        agent = bus.agent("steady", tenant="acme")
        first = edge_build.current(tmp_path / "store")
        deadline = time.monotonic() + 30
        n = 0
        # a steady trickle, never quiet for the runtime's five seconds, until a build switches
        # the store to a new generation of its shard
        while n < 100 or edge_build.current(tmp_path / "store") == first:
            await agent.publish(f"steady note {n} about build {n % 7}", scope="agent/steady")
            n += 1
            await anyio.sleep(0.02)
            assert time.monotonic() < deadline, "no index build under steady writing"
