"""``baas-keys``: rotate a partner's keys in the keyring file while gateways keep serving.

::

    baas-keys --config D/gateway.toml rotate-data-key --partner P
    baas-keys --config D/gateway.toml add-api-secret --partner P [--mode test|live] [--out FILE]
    baas-keys --config D/gateway.toml retire-api-secret --partner P --api-key K --after SECONDS
    baas-keys --config D/gateway.toml retire-api-secret --partner P --api-key K --at 1893456000
    baas-keys --config D/gateway.toml list [--partner P]

``--config`` takes the keyring file and master key file from a gateway config; ``--keyring`` and
``--master-key-file`` name them directly. The master key comes from ``BAAS_MASTER_KEY`` first,
exactly as for the gateway. Every change loads and checks the whole keyring, applies one
operation of :mod:`gateway.keyring`, bumps the version and writes the file atomically (mode
0600) under an exclusive lock on ``<keyring>.lock`` (two operators cannot lose each other's
change). Running gateways pick the change up by themselves (:mod:`gateway.keyring_reload`).

Output is JSON on stdout. A new API secret is printed once (or written to a new 0600 file with
``--out``) and never logged; ``list`` never shows secrets. Refusals (unknown partner or API key,
too many live credentials, retiring the last live one, a tampered keyring) print one line on
stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import load_gateway_config
from gateway.keyring import (
    Keyring,
    PartnerKeys,
    add_api_credential,
    change_keyring,
    load_keyring,
    load_master_key,
    mode_name,
    parse_mode,
    retire_api_credential,
    rotate_data_key,
)
from node.errors import ConfigError, InvalidRequest
from tools.cli_exit import print_json_result

__all__ = ["main"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def parse_at(text: str) -> int:
    """Unix seconds, or an ISO 8601 time with a UTC offset -> milliseconds since the epoch."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidRequest(f"--at {text!r} is not a time")
        return round(seconds * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidRequest(f"--at {text!r} is neither Unix seconds nor ISO 8601") from exc
    if moment.tzinfo is None:
        raise InvalidRequest(f"--at {text!r} has no UTC offset (add Z or +HH:MM)")
    return round(moment.timestamp() * 1000)


def _partner_view(keyring: Keyring, partner: PartnerKeys, now_ms: int) -> dict[str, Any]:
    return {
        "partner_id": partner.partner_id,
        "keyring_version": keyring.version,
        "data_keys": [
            {"key_id": key_id, "active": key_id == partner.active_data_key_id}
            for key_id in sorted(partner.data_keys, key=lambda k: (len(k), k))
        ],
        "credentials": [
            {
                "api_key": c.api_key,
                "mode": mode_name(c.mode),
                "not_after_ms": c.not_after_ms,
                "not_after": _iso(c.not_after_ms),
                "live": c.live(now_ms),
            }
            for c in partner.credentials
        ],
    }


def _write_new_secret_file(path: Path, document: dict[str, Any]) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite
    except FileExistsError as exc:
        raise InvalidRequest(f"--out {path} exists; refusing to overwrite a secret file") from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class _Files:
    def __init__(self, keyring_file: Path, master_key: bytes) -> None:
        self.keyring_file = keyring_file
        self.master_key = master_key

    def load(self) -> Keyring:
        return load_keyring(self.keyring_file, self.master_key)

    def change(self, operation: Callable[[Keyring], Keyring]) -> Keyring:
        return change_keyring(self.keyring_file, self.master_key, operation)


def _cmd_rotate(files: _Files, args: argparse.Namespace) -> dict[str, Any]:
    key_ids: list[str] = []

    def operation(keyring: Keyring) -> Keyring:
        rotated, key_id = rotate_data_key(keyring, args.partner)
        key_ids.append(key_id)
        return rotated

    after = files.change(operation)
    return {
        "partner_id": args.partner,
        "active_data_key_id": key_ids[0],
        "keyring_version": after.version,
    }


def _cmd_add(files: _Files, args: argparse.Namespace) -> dict[str, Any]:
    out: Path | None = args.out
    created: list[dict[str, Any]] = []
    written: list[Path] = []

    def operation(keyring: Keyring) -> Keyring:
        added, credential = add_api_credential(
            keyring, args.partner, _now_ms(), mode=parse_mode(args.mode)
        )
        created.append(
            {
                "partner_id": args.partner,
                "mode": args.mode,
                "api_key": credential.api_key,
                "secret_hex": credential.secret.hex(),
            }
        )
        if out is not None:  # the secret is on disk before the keyring knows the credential
            _write_new_secret_file(out, created[0])
            written.append(out)
        return added

    try:
        after = files.change(operation)
    except BaseException:
        for path in written:  # the keyring was not changed: that secret is worthless
            path.unlink(missing_ok=True)
        raise
    result = {**created[0], "keyring_version": after.version}
    if out is not None:
        del result["secret_hex"]
        result["secret_file"] = str(out)
    return result


def _cmd_retire(files: _Files, args: argparse.Namespace) -> dict[str, Any]:
    now_ms = _now_ms()
    if args.after is not None:
        if args.after < 0:
            raise InvalidRequest("--after must be zero or more seconds")
        not_after_ms = now_ms + round(args.after * 1000)
    else:
        not_after_ms = parse_at(args.at)
        if not_after_ms < now_ms:
            raise InvalidRequest("--at is in the past; use --after 0 to retire now")
    after = files.change(
        lambda keyring: retire_api_credential(
            keyring, args.partner, args.api_key, not_after_ms, now_ms
        )
    )
    return {
        "partner_id": args.partner,
        "api_key": args.api_key,
        "not_after_ms": not_after_ms,
        "not_after": _iso(not_after_ms),
        "keyring_version": after.version,
    }


def _cmd_list(files: _Files, args: argparse.Namespace) -> dict[str, Any]:
    keyring = files.load()
    now_ms = _now_ms()
    if args.partner is not None:
        return _partner_view(keyring, keyring.partner(args.partner), now_ms)
    return {
        "keyring_version": keyring.version,
        "partners": [
            _partner_view(keyring, p, now_ms) for _, p in sorted(keyring.partners.items())
        ],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baas-keys", description="Rotate partner keys and API secrets in a BaaS keyring."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="a gateway.toml naming the keyring files")
    source.add_argument("--keyring", type=Path, help="the keyring file (keyring.json)")
    parser.add_argument(
        "--master-key-file", type=Path, help="with --keyring; BAAS_MASTER_KEY wins when set"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rotate = commands.add_parser("rotate-data-key", help="make a new data key active")
    rotate.add_argument("--partner", required=True)
    rotate.set_defaults(run=_cmd_rotate)
    add = commands.add_parser("add-api-secret", help="add an overlapping API credential")
    add.add_argument("--partner", required=True)
    add.add_argument("--out", type=Path, help="write the new secret to this new 0600 file")
    add.add_argument("--mode", choices=("test", "live"), default="test")
    add.set_defaults(run=_cmd_add)
    retire = commands.add_parser("retire-api-secret", help="set an API credential's end time")
    retire.add_argument("--partner", required=True)
    retire.add_argument("--api-key", required=True)
    end = retire.add_mutually_exclusive_group(required=True)
    end.add_argument("--after", type=float, help="seconds from now")
    end.add_argument("--at", help="Unix seconds or ISO 8601 with a UTC offset")
    retire.set_defaults(run=_cmd_retire)
    show = commands.add_parser("list", help="key ids and credentials (never secrets)")
    show.add_argument("--partner")
    show.set_defaults(run=_cmd_list)
    return parser


def _files(args: argparse.Namespace) -> _Files:
    if args.config is not None:
        if args.master_key_file is not None:
            raise ConfigError("--master-key-file goes with --keyring, not --config")
        config = load_gateway_config(args.config)
        return _Files(config.keyring_file, load_master_key(config.master_key_file))
    return _Files(args.keyring, load_master_key(args.master_key_file))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return print_json_result("baas-keys", lambda: args.run(_files(args), args))


if __name__ == "__main__":
    sys.exit(main())
