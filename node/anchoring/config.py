"""The ``[anchoring]`` settings of a node: which chain and registry, how often, how safe.

Every bound of the anchoring service is here, validated at start (:meth:`AnchoringSettings.
validate`, a :class:`~node.errors.ConfigError` naming the field). Times are seconds in the
file; :meth:`AnchoringSettings.driver_settings` turns them into the driver's milliseconds.

A node anchors only with ``enabled = true`` *and* a ``key_file``: nodes without the key apply
the anchoring entries like every other and serve receipts, but never ask for the lease.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from node.anchoring.driver import DriverSettings
from node.errors import ConfigError

__all__ = ["AnchoringSettings", "anchoring_from_table"]

_ADDRESS_HEX_CHARS = 40
_MS = 1000


@dataclass(frozen=True, slots=True)
class AnchoringSettings:
    enabled: bool = False
    rpc_url: str = ""  # http(s)://... of the chain's JSON-RPC, or "embedded" (tests, demo)
    chain_id: int = 0  # checked against the chain at start: a wrong chain is refused
    contract: str = ""  # the AnchorRegistry's 0x address
    key_file: Path | None = None  # the 0600 chain key; None: this node never anchors
    # When: a batch once this many new leaves, or this long after the last batch (if any new).
    anchor_interval_s: float = 60.0
    anchor_batch_max: int = 10_000
    confirmations: int = 3  # blocks deep (the inclusion block counts) before final
    lease_ttl_s: float = 30.0  # renewed at a third; acting stops with a third left
    open_batches_max: int = 4  # batches signed and not yet mined
    reorg_window_blocks: int = 64  # final batches' blocks are watched this long
    watch_batches_max: int = 64  # final batches read each tick for that watch
    tick_s: float = 0.2  # the service loop's period
    poll_interval_s: float = 2.0  # the head; receipts and block hashes when it moved
    recheck_interval_s: float = 30.0  # a watched block or receipt is read itself this often
    rebroadcast_interval_s: float = 30.0  # send an unmined transaction again
    retry_backoff_base_s: float = 0.5
    retry_backoff_max_s: float = 30.0
    chain_errors_max: int = 8  # failures in a row before the lease is given up
    lease_cooloff_s: float = 60.0  # then no new ask for this long
    lease_acquire_jitter_s: float = 2.0
    replacements_max: int = 3  # new transactions for one batch in one holding
    nonce_used_misses_required: int = 2
    proposal_timeout_s: float = 10.0
    rpc_timeout_s: float = 10.0  # one JSON-RPC request
    chain_call_timeout_s: float = 30.0  # one chain call as the driver waits for it

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("enabled", "rpc_url", "contract", "key_file", "chain_id"):
                continue
            if f.name in ("reorg_window_blocks", "replacements_max", "watch_batches_max"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ConfigError(f"anchoring.{f.name} must be a non-negative integer")
                continue
            integers = f.type in ("int", int)
            number = isinstance(value, int) or (not integers and isinstance(value, float))
            if isinstance(value, bool) or not number or not math.isfinite(value) or value <= 0:
                what = "a positive integer" if integers else "a positive number"
                raise ConfigError(f"anchoring.{f.name} must be {what}")
        if not isinstance(self.enabled, bool):
            raise ConfigError("anchoring.enabled must be true or false")
        if self.retry_backoff_max_s < self.retry_backoff_base_s:
            raise ConfigError("anchoring.retry_backoff_max_s must be >= retry_backoff_base_s")
        if self.lease_ttl_s < 3 * self.tick_s or not 1.0 <= self.lease_ttl_s <= 3600.0:
            raise ConfigError("anchoring.lease_ttl_s must be 1..3600 s and at least 3 ticks")
        if self.poll_interval_s < self.tick_s:
            raise ConfigError("anchoring.poll_interval_s must be at least tick_s")
        if not self.enabled:
            return
        if not isinstance(self.rpc_url, str) or not (
            self.rpc_url == "embedded" or self.rpc_url.startswith(("http://", "https://"))
        ):
            raise ConfigError("anchoring.rpc_url must be http(s)://... or embedded")
        if isinstance(self.chain_id, bool) or not isinstance(self.chain_id, int):
            raise ConfigError("anchoring.chain_id must be an integer")
        if self.chain_id <= 0:
            raise ConfigError("anchoring.chain_id must be positive")
        contract_address_bytes(self.contract)

    @property
    def anchors(self) -> bool:
        """Whether this node may hold the lease (enabled, with a key)."""
        return self.enabled and self.key_file is not None

    def driver_settings(self, node_id: str, sender: bytes | None) -> DriverSettings:
        return DriverSettings(
            node_id=node_id,
            sender=sender,
            chain_id=self.chain_id,
            # A disabled node still runs the service for its status; it never uses a contract.
            contract=contract_address_bytes(self.contract) if self.enabled else bytes(20),
            anchor_interval_ms=_ms(self.anchor_interval_s),
            anchor_batch_max=self.anchor_batch_max,
            confirmations=self.confirmations,
            lease_ttl_ms=_ms(self.lease_ttl_s),
            open_batches_max=self.open_batches_max,
            reorg_window_blocks=self.reorg_window_blocks,
            poll_interval_ms=_ms(self.poll_interval_s),
            rebroadcast_interval_ms=_ms(self.rebroadcast_interval_s),
            retry_backoff_base_ms=_ms(self.retry_backoff_base_s),
            retry_backoff_max_ms=_ms(self.retry_backoff_max_s),
            chain_errors_max=self.chain_errors_max,
            replacements_max=self.replacements_max,
            proposal_timeout_ms=_ms(self.proposal_timeout_s),
            request_timeout_ms=_ms(self.chain_call_timeout_s),
            lease_acquire_jitter_ms=_ms(self.lease_acquire_jitter_s),
            lease_cooloff_ms=_ms(self.lease_cooloff_s),
            nonce_used_misses_required=self.nonce_used_misses_required,
            watch_batches_max=self.watch_batches_max,
            recheck_interval_ms=_ms(self.recheck_interval_s),
        )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * _MS))


def contract_address_bytes(address: str) -> bytes:
    """The 20 bytes of a ``0x`` + 40 hex address (the checksum is checked by the chain side)."""
    if (
        not isinstance(address, str)
        or not address.startswith("0x")
        or len(address) != 2 + _ADDRESS_HEX_CHARS
    ):
        raise ConfigError("anchoring.contract must be a 0x address of 40 hex digits")
    try:
        return bytes.fromhex(address[2:])
    except ValueError as exc:
        raise ConfigError("anchoring.contract must be a 0x address of 40 hex digits") from exc


def anchoring_from_table(table: dict[str, Any], base: Path) -> AnchoringSettings:
    """Build and validate the settings from a TOML ``[anchoring]`` table; ``key_file`` is
    relative to ``base`` (the config file's directory). Unknown keys are refused."""
    known = {f.name for f in fields(AnchoringSettings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[anchoring] unknown keys: {', '.join(unknown)}")
    values = dict(table)
    key_file = values.get("key_file")
    if key_file is not None:
        if not isinstance(key_file, str) or not key_file:
            raise ConfigError("anchoring.key_file must be a non-empty path")
        path = Path(key_file)
        values["key_file"] = path if path.is_absolute() else base / path
    settings = AnchoringSettings(**values)
    settings.validate()
    return settings
