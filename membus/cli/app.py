"""The ``membus`` command line: run writers, publish, recall, tail, inspect and repair.

Every command reads its configuration through ``Settings`` (env ``MEMBUS_*``, overridden by the
global flags). On the embedded default (no Redis URL) a command owns the whole data directory for
its lifetime, in-process writers included; with a Redis URL, commands that only need streams
(publish, tail, dlq, and stats while a worker holds an edge store) do not open the store at all,
so they run beside ``membus worker``.

While ``membus serve`` or ``membus mcp`` holds an embedded directory, commands on it run at that
node instead (``calls``, ``node``): what each does on a bus is one registered operation, run here
or there.

This module is the typer app: global options and the command table. The commands live in
``feed`` (publish/recall/tail), ``memories`` (memories …), ``ops`` (worker/stats/optimize/dlq),
``admin`` (audit/forget/policy), ``serve`` (serve/mcp), ``keys`` (keys …) and ``showcase``
(demo/bench/eval); they are registered here, not by decorators there, so
``python -m membus.cli`` and ``import membus.cli.app`` build the same single app.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from membus.cli.admin import audit, forget, policy_check, policy_reload
from membus.cli.context import JsonFlag, State
from membus.cli.feed import publish, recall, tail
from membus.cli.keys import keys_authority, keys_list, keys_new, keys_revoke, keys_rotate
from membus.cli.memories import delete, export, get, history, import_, list_, update
from membus.cli.ops import dlq_drop, dlq_list, dlq_replay, optimize, stats, worker
from membus.cli.output import configure_logging, fail
from membus.cli.prompt import context
from membus.cli.serve import mcp, serve
from membus.cli.settings import Settings
from membus.cli.showcase import bench, demo, eval_locomo, eval_tokens
from membus.errors import MembusError

app = typer.Typer(
    name="membus",
    help="Event-driven shared memory bus for teams of AI agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(
    help="Dead letters: events the writers could not process.", no_args_is_help=True
)
policy_app = typer.Typer(
    help="Permissions: reload the policy, ask what it allows.", no_args_is_help=True
)
keys_app = typer.Typer(
    help="API keys for `membus serve` and agents' signing keys: new, list, revoke, rotate "
    "(effective without a restart); the signing authority writers pin.",
    no_args_is_help=True,
)
eval_app = typer.Typer(help="Retrieval quality on public benchmarks.", no_args_is_help=True)
memories_app = typer.Typer(
    help="See and manage memories as an agent: list, get, history, update, delete, export, import.",
    no_args_is_help=True,
)
app.add_typer(memories_app, name="memories")
app.add_typer(dlq_app, name="dlq")
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(eval_app, name="eval")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"membus {version('membus')}")
        except PackageNotFoundError:  # a source tree run without installing it
            typer.echo("membus (not installed)")
        raise typer.Exit()


@app.callback()
def _global(
    ctx: typer.Context,
    _show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    path: Annotated[
        Path | None, typer.Option("--path", help="Data directory (env MEMBUS_PATH; ./.membus).")
    ] = None,
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis URL; unset: embedded redis-server.")
    ] = None,
    store_engine: Annotated[
        str | None, typer.Option("--store-engine", help="edge (in-process) or qdrant.")
    ] = None,
    store_url: Annotated[
        str | None, typer.Option("--store-url", help="Qdrant server URL (engine qdrant).")
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            help="Casbin policy csv (env MEMBUS_POLICY_FILE; none: private, see "
            "MEMBUS_POLICY_MODE).",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    try:
        settings = Settings.load(
            path=path,
            redis_url=redis_url,
            store_engine=store_engine,
            store_url=store_url,
            policy_file=policy,
        )
    except MembusError as exc:
        fail(exc, json_output)
    configure_logging(settings, json_output)
    ctx.obj = State(settings, json_output)


# the order here is the order `membus --help` lists them in
app.command()(worker)
app.command()(publish)
app.command()(recall)
app.command()(context)
app.command()(tail)
memories_app.command("list")(list_)
memories_app.command("get")(get)
memories_app.command("history")(history)
memories_app.command("update")(update)
memories_app.command("delete")(delete)
memories_app.command("export")(export)
memories_app.command("import")(import_)
app.command()(stats)
app.command()(optimize)
dlq_app.command("list")(dlq_list)
dlq_app.command("replay")(dlq_replay)
dlq_app.command("drop")(dlq_drop)
app.command()(forget)
app.command()(audit)
policy_app.command("check")(policy_check)
policy_app.command("reload")(policy_reload)
app.command()(serve)
app.command()(mcp)
keys_app.command("new")(keys_new)
keys_app.command("list")(keys_list)
keys_app.command("revoke")(keys_revoke)
keys_app.command("rotate")(keys_rotate)
keys_app.command("authority")(keys_authority)
app.command()(demo)
app.command()(bench)
eval_app.command("locomo")(eval_locomo)
eval_app.command("tokens")(eval_tokens)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
