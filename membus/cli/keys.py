"""``membus keys``: API keys for ``membus serve`` and the agents' event-signing keys.

API keys live in the keys file (``--file``, env ``MEMBUS_API_KEYS``): a key is printed once and
only its SHA-256 digest is written, so the file can be read by the service (and backed up)
without handing out credentials. A key's id is the start of its digest. A running service reads
the file again when it changes (``ApiKeys``: checked every second), so ``new``, ``revoke`` and
``rotate`` take effect without a restart.

Signing keys (``--signing``) are the per-agent Ed25519 keys events are signed with; their public
parts live in Redis and every process re-reads them within a second (``KeyRegistry``).
"""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Column, Table

from membus.cli.context import AgentOpt, JsonFlag, State, TenantOpt, command_state, run
from membus.cli.output import emit_json, fail, say
from membus.core.envelope import invalid_from
from membus.errors import InvalidInput, MembusError

if TYPE_CHECKING:
    from membus.access.signing import KeyInfo
    from membus.service.auth import KeyEntry, KeysFile

DEFAULT_KEYS_FILE = Path("keys.json")
_ID_CHARS = 12  # of the digest, shown as a key's id
_MIN_ID = 8

FileOpt = Annotated[
    Path | None,
    typer.Option("--file", "-f", help="API keys file (env MEMBUS_API_KEYS; keys.json)."),
]
SigningFlag = Annotated[
    bool,
    typer.Option("--signing", help="Agents' event-signing keys (in Redis), not API keys."),
]
OptAgent = Annotated[str | None, typer.Option("--agent", "-a", help="The key's agent.")]
OptTenant = Annotated[str | None, typer.Option("--tenant", "-t", help="The key's tenant.")]


def _path(state: State, file: Path | None) -> Path:
    return file or state.settings.api_keys or DEFAULT_KEYS_FILE


def _role(operator: bool, metrics_only: bool) -> str:
    return " (operator)" if operator else " (metrics only)" if metrics_only else ""


def _read(path: Path) -> KeysFile:
    from membus.service.auth import KeysFile, read_keys_file

    if not path.exists():
        return KeysFile(keys=[])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read API keys file {path}: {exc.strerror}") from None
    return read_keys_file(raw, path)


def _write(path: Path, keys: KeysFile) -> None:
    """Replace the keys file atomically: a reader (a running service) sees old or new, whole."""
    text = orjson.dumps(keys.model_dump(), option=orjson.OPT_INDENT_2) + b"\n"
    parent = path.parent if str(path.parent) else Path(".")
    tmp: str | None = None
    try:
        # mkstemp: owner-only. Digests are not secrets, but who holds which identity is private.
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise InvalidInput(f"cannot write API keys file {path}: {exc.strerror}") from None


def _entry(agent: str, tenant: str, operator: bool, metrics_only: bool) -> tuple[str, KeyEntry]:
    from membus.service.auth import KeyEntry, hash_key, new_key

    key = new_key()
    try:
        entry = KeyEntry(
            sha256=hash_key(key),
            agent=agent,
            tenant=tenant,
            operator=operator,
            metrics_only=metrics_only,
        )
    except ValidationError as exc:
        raise invalid_from(exc, "api key") from None
    return key, entry


def _shown(entry: KeyEntry, path: Path) -> dict[str, object]:
    # name: what policies and scopes call this agent (the id as given, encoded: membus.core.ids)
    name = entry.principal().identity.agent
    return {"id": entry.sha256[:_ID_CHARS], **entry.model_dump(), "file": str(path), "name": name}


def _chosen(
    keys: KeysFile, key_id: str | None, agent: str | None, tenant: str | None
) -> list[KeyEntry]:
    """The entries a revoke/rotate names: by id (a unique digest prefix), or every key of
    --agent in --tenant."""
    if (key_id is None) == (agent is None or tenant is None):
        raise InvalidInput(
            "name a key by ID (see `membus keys list`), or give --agent and --tenant"
        )
    if key_id is not None:
        wanted = key_id.lower()
        if len(wanted) < _MIN_ID:
            raise InvalidInput(f"a key id has at least {_MIN_ID} characters")
        found = [e for e in keys.keys if e.sha256.startswith(wanted)]
        if len(found) > 1:
            raise InvalidInput(f"key id {key_id!r} matches {len(found)} keys: give more of it")
    else:
        found = [e for e in keys.keys if (e.agent, e.tenant) == (agent, tenant)]
    if not found:
        from membus.errors import NotFound

        raise NotFound("no such API key in the keys file")
    return found


# -- commands ---------------------------------------------------------------------------------


def keys_new(
    ctx: typer.Context,
    agent: AgentOpt,
    tenant: TenantOpt,
    operator: Annotated[
        bool,
        typer.Option(
            "--operator", help="May also call service-wide operations (policy reload, /metrics)."
        ),
    ] = False,
    metrics_only: Annotated[
        bool,
        typer.Option(
            "--metrics-only", help="May scrape /metrics and nothing else (for Prometheus)."
        ),
    ] = False,
    file: FileOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Create an API key for --agent in --tenant: prints the key once, stores only its digest."""
    state = command_state(ctx, json_flag)
    path = _path(state, file)
    try:
        key, entry = _entry(agent, tenant, operator, metrics_only)
        keys = _read(path)
        keys.keys.append(entry)
        _write(path, keys)
    except MembusError as exc:
        fail(exc, state.json)
    if state.json:
        emit_json({"key": key, **_shown(entry, path)})
    else:
        typer.echo(key)
        name = entry.principal().identity.agent
        named = f" (named {name} in policies)" if name != agent else ""
        typer.echo(
            f"API key for {agent}{named} in {tenant}{_role(operator, metrics_only)} added to "
            f"{path}; it is shown only this once",
            err=True,
        )


def keys_list(
    ctx: typer.Context,
    signing: SigningFlag = False,
    agent: OptAgent = None,
    tenant: OptTenant = None,
    file: FileOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """List API keys (id, agent, tenant, role; never a secret), or with --signing --tenant the
    agents' signing keys (kid, state, current)."""
    state = command_state(ctx, json_flag)
    if signing:
        _signing_list(state, tenant, agent)
        return
    path = _path(state, file)
    try:
        entries = [
            e
            for e in _read(path).keys
            if (agent is None or e.agent == agent) and (tenant is None or e.tenant == tenant)
        ]
    except MembusError as exc:
        fail(exc, state.json)
    if state.json:
        emit_json([_shown(e, path) for e in entries])
        return
    table = Table("id", "agent", "tenant", "role", caption=str(path))
    for e in entries:
        role = "operator" if e.operator else "metrics only" if e.metrics_only else "agent"
        table.add_row(e.sha256[:_ID_CHARS], e.agent, e.tenant, role)
    Console().print(table)


def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[
        str | None,
        typer.Argument(help="API key id (from `keys list`), or with --signing the kid."),
    ] = None,
    signing: SigningFlag = False,
    agent: OptAgent = None,
    tenant: OptTenant = None,
    file: FileOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Revoke an API key (by id, or every key of --agent in --tenant), or with --signing an
    agent's signing key; a running service refuses it within a second, no restart."""
    state = command_state(ctx, json_flag)
    if signing:
        if key_id is None or agent is None or tenant is None:
            fail(InvalidInput("--signing revoke needs KID, --agent and --tenant"), state.json)
        _signing_change(state, "revoke", tenant, agent, kid=key_id)
        return
    path = _path(state, file)
    try:
        keys = _read(path)
        gone = _chosen(keys, key_id, agent, tenant)
        keys.keys[:] = [e for e in keys.keys if e not in gone]
        _write(path, keys)
    except MembusError as exc:
        fail(exc, state.json)
    if state.json:
        emit_json({"revoked": [_shown(e, path) for e in gone]})
    else:
        for e in gone:
            typer.echo(f"revoked {e.sha256[:_ID_CHARS]}  {e.agent}  {e.tenant}")


def keys_rotate(
    ctx: typer.Context,
    key_id: Annotated[
        str | None, typer.Argument(help="API key id (from `keys list`) to replace.")
    ] = None,
    signing: SigningFlag = False,
    agent: OptAgent = None,
    tenant: OptTenant = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="--signing: seconds the old key still verifies events signed before (86400).",
        ),
    ] = 24 * 3600.0,
    file: FileOpt = None,
    json_flag: JsonFlag = False,
) -> None:
    """Replace an API key with a new one for the same identity and role (printed once; the old
    one is refused from now on), or with --signing give --agent a new signing key."""
    state = command_state(ctx, json_flag)
    if signing:
        if agent is None or tenant is None:
            fail(InvalidInput("--signing rotate needs --agent and --tenant"), state.json)
        _signing_change(state, "rotate", tenant, agent, grace_s=grace)
        return
    path = _path(state, file)
    try:
        keys = _read(path)
        [old] = _chosen(keys, key_id, None, None) if key_id else _one(keys, agent, tenant)
        key, entry = _entry(old.agent, old.tenant, old.operator, old.metrics_only)
        keys.keys[keys.keys.index(old)] = entry
        _write(path, keys)
    except MembusError as exc:
        fail(exc, state.json)
    if state.json:
        emit_json({"key": key, **_shown(entry, path), "replaced": old.sha256[:_ID_CHARS]})
    else:
        typer.echo(key)
        say(
            False,
            f"API key {old.sha256[:_ID_CHARS]} of {old.agent} in {old.tenant} replaced by "
            f"{entry.sha256[:_ID_CHARS]}; the new key is shown only this once",
        )


def _one(keys: KeysFile, agent: str | None, tenant: str | None) -> list[KeyEntry]:
    found = _chosen(keys, None, agent, tenant)
    if len(found) > 1:
        raise InvalidInput(f"{agent} in {tenant} has {len(found)} keys: name one by its id")
    return found


def keys_authority(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Print the signing authority's public key (hex): what writers pin (MEMBUS_SIGNING_AUTHORITY).

    It is derived from the door's master secret (MEMBUS_SIGNING_MASTER_FILE, else signing.key in
    the data directory; created 0600 if missing). Only the public key is printed."""
    from membus.access.signing import MASTER_FILE, authority_public_key, load_master

    state = command_state(ctx, json_flag)
    path = state.settings.signing_master_file or state.settings.data_dir / MASTER_FILE
    try:
        authority = authority_public_key(load_master(path))
    except MembusError as exc:
        fail(exc, state.json)
    if state.json:
        emit_json({"authority": authority, "master_file": str(path)})
    else:
        typer.echo(authority)


# -- signing keys -----------------------------------------------------------------------------


def _print_signing(keys: list[KeyInfo]) -> None:
    def when(t: float | None) -> str:
        return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

    # the kid whole, never folded or cut: it is what `keys revoke --signing` takes
    width = max((len(k.kid) for k in keys), default=3)
    table = Table(Column("kid", no_wrap=True, min_width=width), "agent", "state", "current")
    for name in ("created", "expires", "revoked"):
        table.add_column(name, no_wrap=True)
    for k in keys:
        table.add_row(
            k.kid,
            k.agent,
            k.state,
            "yes" if k.current else "",
            when(k.created_at),
            when(k.expires_at),
            when(k.revoked_at),
        )
    Console().print(table)


def _signing_list(state: State, tenant: str | None, agent: str | None) -> None:
    from membus.cli import calls

    if tenant is None:
        fail(InvalidInput("--signing needs --tenant"), state.json)
    keys = run(state, lambda: calls.perform(state, calls.signing_keys, tenant=tenant, agent=agent))
    if state.json:
        emit_json([k.model_dump(mode="json") for k in keys])
    else:
        _print_signing(keys)


def _signing_change(
    state: State,
    what: str,
    tenant: str,
    agent: str,
    *,
    kid: str = "",
    grace_s: float = 0.0,
) -> None:
    from membus.cli import calls

    async def go() -> list[KeyInfo]:
        if what == "revoke":
            return await calls.perform(
                state, calls.signing_revoke, tenant=tenant, agent=agent, kid=kid
            )
        return await calls.perform(
            state, calls.signing_rotate, tenant=tenant, agent=agent, grace_s=grace_s
        )

    keys = run(state, go)
    if state.json:
        emit_json([k.model_dump(mode="json") for k in keys])
    else:
        _print_signing(keys)
