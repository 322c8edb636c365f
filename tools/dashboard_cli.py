"""``baas-dashboard``: create, rotate, remove and list the dashboard's operator credentials.
::

    baas-dashboard operator add NAME --file OPERATORS.json [--password-stdin]
    baas-dashboard operator rotate NAME --file OPERATORS.json [--password-stdin]
    baas-dashboard operator remove NAME --file OPERATORS.json
    baas-dashboard operator list --file OPERATORS.json

The file is the one the gateway config names (``[dashboard] operators_file``; ``baas-cluster
init`` points it at ``secrets/operators.json``); the gateway reads it at every sign-in, so a
change takes effect at once. ``add`` and ``rotate`` ask for the password (or read one line from
stdin), store only its scrypt hash, make a new TOTP secret and print it once, with its
``otpauth://`` URI for an authenticator app: it is not shown again (rotate to get a new one).
Exit status 0, or 2 with a message for a refused request.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.dashboard.operators import (
    load_operators,
    new_operator,
    provisioning_uri,
    save_operators,
)
from node.errors import BaasError, InvalidRequest

__all__ = ["main", "read_password"]


def read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise InvalidRequest("the two passwords differ", code="password_mismatch")
    return first


def _put(args: argparse.Namespace, *, exists: bool) -> None:
    operators = load_operators(args.file)
    if (args.name in operators) != exists:
        raise InvalidRequest(
            f"operator {args.name!r} " + ("does not exist" if exists else "exists already"),
            code="operator_exists" if not exists else "operator_not_found",
        )
    operator = new_operator(args.name, read_password(args.password_stdin))
    save_operators(args.file, {**operators, args.name: operator})
    print(f"operator {args.name} {'rotated' if exists else 'added'} in {args.file}")
    print("TOTP secret (shown once; add it to an authenticator app):")
    print(f"  {operator.totp_secret}")
    print(f"  {provisioning_uri(operator)}")


def _remove(args: argparse.Namespace) -> None:
    operators = load_operators(args.file)
    if operators.pop(args.name, None) is None:
        raise InvalidRequest(f"operator {args.name!r} does not exist", code="operator_not_found")
    save_operators(args.file, operators)
    print(f"operator {args.name} removed from {args.file}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baas-dashboard", description="Manage the dashboard's operator credentials."
    )
    groups = parser.add_subparsers(dest="group", required=True)
    operator = groups.add_parser("operator", help="operator credentials")
    actions = operator.add_subparsers(dest="action", required=True)
    for action in ("add", "rotate", "remove", "list"):
        sub = actions.add_parser(action)
        if action != "list":
            sub.add_argument("name")
        sub.add_argument("--file", type=Path, required=True, help="the operators file")
        if action in ("add", "rotate"):
            sub.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "add":
            _put(args, exists=False)
        elif args.action == "rotate":
            _put(args, exists=True)
        elif args.action == "remove":
            _remove(args)
        else:
            for name, op in sorted(load_operators(args.file).items()):
                print(f"{name}\t{op.role}")
    except BaasError as exc:
        print(f"error: {exc.detail} ({exc.code})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
