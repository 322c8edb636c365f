"""``baas-partners``: onboard partners, change their status, read the audit trail, add operators.

::

    baas-partners --config D/gateway.toml onboard --partner shop-x [--operator NAME]
    baas-partners --config D/gateway.toml show --partner shop-x
    baas-partners --config D/gateway.toml set-status --partner shop-x --status suspended
    baas-partners --config D/gateway.toml audit [--partner shop-x] [--mode test|live] [--limit N]
    baas-partners --config D/gateway.toml add-operator --name alice
    baas-partners --config D/gateway.toml dashboard-user add --partner shop-x --name pat \
        --role admin|viewer [--password-stdin]
    baas-partners --config D/gateway.toml dashboard-user remove --partner shop-x --name pat
    baas-partners --config D/gateway.toml dashboard-user list [--partner shop-x]
    baas-partners --config D/gateway.toml webhook add --partner shop-x --url URL \
        [--events payment.captured,reserve.low | '*'] [--mode test|live]
    baas-partners --config D/gateway.toml webhook list --partner shop-x
    baas-partners --config D/gateway.toml webhook remove|enable|disable --partner shop-x --id we_...
    baas-partners --config D/gateway.toml webhook rotate-secret --partner shop-x --id we_... \
        [--overlap-s 86400]

It reads the gateway's config for the nodes, the node API token, the keyring and its master
key (``BAAS_MASTER_KEY`` first, as for the gateway). ``onboard`` puts the partner on the log
through any node and the leader (actor: the operator, ``--operator`` or the login name), then
writes its test and live API credentials and data key into the keyring under the keyring's
file lock (as ``baas-keys`` does) and prints the secrets ONCE (:mod:`gateway.partners`).
``add-operator`` creates an operator credential for the admin API and prints its secret once.
``dashboard-user add`` gives a partner's person a dashboard sign-in (not an API secret): it
asks for a password (or reads one line from stdin), stores its scrypt hash and a new TOTP
secret in ``[dashboard] partner_users_file`` and prints the TOTP secret once
(:mod:`gateway.dashboard.partner_users`: roles, and why TOTP is required); adding a user that
exists replaces (rotates) its credential, which ends its sessions.
``webhook add`` registers a webhook endpoint in the keyring (the URL passes the gateway's
``[webhooks]`` SSRF rule) and prints its signing secret ONCE; ``rotate-secret`` prints the new
one, the old one signing too for ``--overlap-s`` (:mod:`gateway.webhook_endpoints`).
``webhook list`` shows each endpoint's ``status`` with ``disabled_reason`` (``partner``, or
``failing``: the deliverer disabled it after every attempt failed for ``[webhooks]
endpoint_failing_s_max``) and ``disabled_at``; ``webhook enable`` re-enables it, and its paused
deliveries go out again.
Running gateways pick keyring changes up by themselves.

Output is JSON on stdout. Refusals (a partner that exists, an unknown partner, no node
reachable) print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from business.identity import Actor, PartnerStatus
from gateway.config import GatewayConfig, load_gateway_config
from gateway.dashboard.partner_users import (
    ROLES,
    load_partner_users,
    new_partner_user,
    save_partner_users,
    user_key,
)
from gateway.keyring import (
    Keyring,
    add_operator,
    change_keyring,
    load_keyring,
    load_master_key,
    parse_mode,
)
from gateway.node_client import NodeClient
from gateway.partners import (
    audit_list,
    check_name,
    onboard,
    operator_cli_actor,
    partner_object,
    read_partner,
    set_status,
)
from gateway.webhook_endpoints import (
    WebhookEndpoint,
    add_endpoint,
    endpoint_object,
    find,
    remove_endpoint,
    rotate_secret,
    set_enabled,
)
from gateway.webhook_routes import change_endpoints, url_policy
from node.errors import InvalidRequest, NotFound
from tools.cli_exit import print_json_result
from tools.dashboard_cli import read_password

__all__ = ["main"]

DEADLINE_S = 30.0
AUDIT_LIMIT_MAX = 100


class _Context:
    def __init__(self, config: GatewayConfig, nodes: NodeClient, operator: str) -> None:
        self.config = config
        self.nodes = nodes
        self.master_key = load_master_key(config.master_key_file)
        self.actor: Actor = operator_cli_actor(operator)
        self.deadline = asyncio.get_running_loop().time() + DEADLINE_S

    def keyring(self) -> Keyring:
        return load_keyring(self.config.keyring_file, self.master_key)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def _onboard(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    name = check_name(args.partner, "--partner")
    _, partner = await onboard(
        ctx.nodes,
        ctx.config.keyring_file,
        ctx.master_key,
        ctx.keyring(),
        name,
        ctx.actor,
        deadline=ctx.deadline,
        request_id=None,
    )
    on_log = await read_partner(ctx.nodes, name, deadline=ctx.deadline, request_id=None)
    return partner_object(name, on_log, partner, _now_ms(), secrets_once=partner)


async def _show(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    keys = ctx.keyring().partners.get(args.partner)
    on_log = await read_partner(ctx.nodes, args.partner, deadline=ctx.deadline, request_id=None)
    if keys is None and on_log is None:
        raise NotFound(f"no partner {args.partner!r}", code="partner_not_found")
    return partner_object(args.partner, on_log, keys, _now_ms())


async def _set_status(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    status = PartnerStatus[args.status.upper()]
    outcome = await set_status(
        ctx.nodes, args.partner, status, ctx.actor, deadline=ctx.deadline, request_id=None
    )
    return {"partner": args.partner, "status": args.status, "result": outcome["code"]}


async def _audit(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    if not 1 <= args.limit <= AUDIT_LIMIT_MAX:
        raise InvalidRequest(f"--limit must be 1..{AUDIT_LIMIT_MAX}", param="--limit")
    return await audit_list(
        ctx.nodes,
        ctx.keyring(),
        args.partner,
        parse_mode(args.mode, "--mode"),
        limit=args.limit,
        starting_after=None,
        deadline=ctx.deadline,
        request_id=None,
    )


async def _add_operator(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    created = []

    def operation(keyring: Keyring) -> Keyring:
        changed, credential = add_operator(keyring, args.name)
        created.append(credential)
        return changed

    after = await asyncio.to_thread(
        change_keyring, ctx.config.keyring_file, ctx.master_key, operation
    )
    return {
        "operator": args.name,
        "api_key": created[0].api_key,
        "secret_hex": created[0].secret.hex(),
        "keyring_version": after.version,
    }


def _users_file(ctx: _Context) -> Path:
    path = ctx.config.dashboard.partner_users_file
    if path is None:
        raise InvalidRequest(
            "the gateway config names no [dashboard] partner_users_file", param="--config"
        )
    return path


async def _user_add(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    name = check_name(args.partner, "--partner")
    if name not in ctx.keyring().partners:
        raise NotFound(f"no partner {name!r} in the keyring", code="partner_not_found")
    path = _users_file(ctx)
    user = new_partner_user(name, args.name, args.role, read_password(args.password_stdin))
    users = load_partner_users(path)
    rotated = user.key in users
    save_partner_users(path, {**users, user.key: user})
    return {
        "object": "dashboard_user",
        "partner": name,
        "name": user.name,
        "role": user.role,
        "rotated": rotated,
        "totp_secret": user.totp_secret,
        "otpauth_uri": user.provisioning_uri(),
    }


async def _user_remove(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    path = _users_file(ctx)
    users = load_partner_users(path)
    key = user_key(args.partner, args.name)
    if key not in users:
        raise NotFound(f"no dashboard user {key!r}", code="user_not_found")
    save_partner_users(path, {k: u for k, u in users.items() if k != key})
    return {"object": "dashboard_user", "partner": args.partner, "name": args.name,
            "deleted": True}  # fmt: skip


async def _user_list(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    users = load_partner_users(_users_file(ctx)).values()
    data = [
        {"object": "dashboard_user", "partner": u.partner, "name": u.name, "role": u.role}
        for u in users
        if args.partner is None or u.partner == args.partner
    ]
    return {"object": "list", "data": data, "has_more": False}


async def _webhook_change(
    ctx: _Context, partner: str, operation: Callable[..., tuple[WebhookEndpoint, ...]]
) -> Keyring:
    return await change_endpoints(
        ctx.config.keyring_file, ctx.master_key, check_name(partner, "--partner"), operation
    )


async def _webhook_add(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    made: list[WebhookEndpoint] = []

    def add(endpoints: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        events = [e.strip() for e in args.events.split(",") if e.strip()]
        mode = parse_mode(args.mode, "--mode")
        after, endpoint = add_endpoint(
            endpoints, args.url, mode, events, url_policy(ctx.config), _now_ms()
        )
        made.append(endpoint)
        return after

    await _webhook_change(ctx, args.partner, add)
    return endpoint_object(made[0], _now_ms(), secret_once=made[0].secrets[0].secret)


async def _webhook_list(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    keys = ctx.keyring().partner(args.partner)
    data = [endpoint_object(e, _now_ms()) for e in keys.webhook_endpoints]
    return {"object": "list", "data": data, "has_more": False}


async def _webhook_remove(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    await _webhook_change(ctx, args.partner, lambda e: remove_endpoint(e, args.id))
    return {"id": args.id, "object": "webhook_endpoint", "deleted": True}


async def _webhook_enable(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    enabled = args.webhook_command == "enable"
    keyring = await _webhook_change(
        ctx, args.partner, lambda e: set_enabled(e, args.id, enabled, _now_ms())
    )
    return endpoint_object(
        find(keyring.partner(args.partner).webhook_endpoints, args.id), _now_ms()
    )


async def _webhook_rotate(ctx: _Context, args: argparse.Namespace) -> dict[str, Any]:
    fresh: list[bytes] = []

    def rotate(endpoints: tuple[WebhookEndpoint, ...]) -> tuple[WebhookEndpoint, ...]:
        after, secret = rotate_secret(endpoints, args.id, args.overlap_s, _now_ms())
        fresh.append(secret.secret)
        return after

    keyring = await _webhook_change(ctx, args.partner, rotate)
    endpoint = find(keyring.partner(args.partner).webhook_endpoints, args.id)
    return endpoint_object(endpoint, _now_ms(), secret_once=fresh[0])


Command = Callable[[_Context, argparse.Namespace], Awaitable[dict[str, Any]]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baas-partners", description="Onboard BaaS partners and read the audit trail."
    )
    parser.add_argument("--config", type=Path, required=True, help="the gateway.toml")
    parser.add_argument(
        "--operator", default=None, help="who acts (the audit trail's actor; default: login)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    onboard_cmd = commands.add_parser("onboard", help="onboard a partner; prints secrets once")
    onboard_cmd.add_argument("--partner", required=True)
    onboard_cmd.set_defaults(run=_onboard)
    show = commands.add_parser("show", help="a partner: status, accounts, credential ids")
    show.add_argument("--partner", required=True)
    show.set_defaults(run=_show)
    status = commands.add_parser("set-status", help="suspend or reactivate a partner")
    status.add_argument("--partner", required=True)
    status.add_argument("--status", required=True, choices=("active", "suspended"))
    status.set_defaults(run=_set_status)
    audit = commands.add_parser("audit", help="configuration changes, newest first")
    audit.add_argument("--partner", help="one partner's trail (default: every change)")
    audit.add_argument("--mode", choices=("test", "live"), default="test")
    audit.add_argument("--limit", type=int, default=20)
    audit.set_defaults(run=_audit)
    operator = commands.add_parser("add-operator", help="an admin API credential; secret once")
    operator.add_argument("--name", required=True, help="the operator's id")
    operator.set_defaults(run=_add_operator)
    user = commands.add_parser("dashboard-user", help="a partner's dashboard sign-ins")
    user_commands = user.add_subparsers(dest="user_command", required=True)
    add = user_commands.add_parser("add", help="add or rotate; prints the TOTP secret once")
    add.add_argument("--partner", required=True)
    add.add_argument("--name", required=True, help="the user's sign-in name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--password-stdin", action="store_true", help="read it from stdin")
    add.set_defaults(run=_user_add)
    remove = user_commands.add_parser("remove", help="remove (ends its sessions)")
    remove.add_argument("--partner", required=True)
    remove.add_argument("--name", required=True)
    remove.set_defaults(run=_user_remove)
    listing = user_commands.add_parser("list", help="users and roles (no secrets)")
    listing.add_argument("--partner")
    listing.set_defaults(run=_user_list)
    _webhook_parser(commands)
    return parser


def _webhook_parser(commands: Any) -> None:
    hook = commands.add_parser("webhook", help="a partner's webhook endpoints")
    hook_commands = hook.add_subparsers(dest="webhook_command", required=True)
    add = hook_commands.add_parser("add", help="register an endpoint; prints its secret once")
    add.add_argument("--partner", required=True)
    add.add_argument("--url", required=True)
    add.add_argument("--events", default="*", help="comma-separated event types, or *")
    add.add_argument("--mode", choices=("test", "live"), default="test")
    add.set_defaults(run=_webhook_add)
    listing = hook_commands.add_parser("list", help="endpoints (no secrets)")
    listing.add_argument("--partner", required=True)
    listing.set_defaults(run=_webhook_list)
    remove = hook_commands.add_parser("remove", help="remove an endpoint")
    remove.add_argument("--partner", required=True)
    remove.add_argument("--id", required=True)
    remove.set_defaults(run=_webhook_remove)
    for name in ("enable", "disable"):
        toggle = hook_commands.add_parser(name, help=f"{name} an endpoint (disabled: no events)")
        toggle.add_argument("--partner", required=True)
        toggle.add_argument("--id", required=True)
        toggle.set_defaults(run=_webhook_enable)
    rotate = hook_commands.add_parser("rotate-secret", help="a new secret; prints it once")
    rotate.add_argument("--partner", required=True)
    rotate.add_argument("--id", required=True)
    rotate.add_argument("--overlap-s", type=int, default=86_400, help="both secrets sign this long")
    rotate.set_defaults(run=_webhook_rotate)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    config = load_gateway_config(args.config)
    token = config.node_api_token_file.read_text().strip()
    nodes = NodeClient(config.nodes, token, config.limits, config.timeouts)
    await nodes.start()
    try:
        operator = args.operator or getpass.getuser()
        run: Command = args.run
        return await run(_Context(config, nodes, operator), args)
    finally:
        await nodes.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return print_json_result("baas-partners", lambda: asyncio.run(_run(args)))


if __name__ == "__main__":
    sys.exit(main())
