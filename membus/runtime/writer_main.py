"""The entry point of one writer process: ``python -m membus.runtime.writer_main``.

``WriterProcesses`` (``membus.runtime.writers``) starts it with the child's configuration as
JSON on stdin; it runs ordinary writers against the parent's Redis and its served shard.
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio

from membus.core.config import MembusConfig
from membus.errors import InvalidInput
from membus.runtime.host import connect, run_writers
from membus.runtime.signals import on_signals


async def _run(config: MembusConfig) -> None:
    stop = anyio.Event()
    # redis.url and the store's socket are given: connect opens nothing under the path
    async with (
        connect(config, Path(".")) as (redis, store, embedder),
        anyio.create_task_group() as tg,
    ):
        await tg.start(on_signals, stop, tg.cancel_scope)
        await run_writers(redis, store, embedder, config, stop)
        tg.cancel_scope.cancel()


def main() -> None:
    config = MembusConfig.model_validate_json(sys.stdin.buffer.read())
    if config.redis.url is None or config.store.engine != "remote":
        # started by hand with a partial config it would start a Redis and a store of its own
        raise InvalidInput(
            "a writer process needs redis.url and a remote store (see WriterProcesses)"
        )
    anyio.run(_run, config)


if __name__ == "__main__":
    main()
