"""The ``[deposits]`` settings of a node: which vaults to watch, how safely, with what bounds.

One typed config, validated at start (:meth:`DepositsConfig.validate`, a
:class:`~node.errors.ConfigError` naming the field)::

    [deposits]
    enabled = true
    confirmations = 12            # blocks on top, the inclusion block counting
    poll_interval_s = 1.0
    ...bounds (log_range_blocks_max, pending_deposits_max, ...)

    [deposits.test]               # the test mode's vault: a development chain only
    rpc_url = "http://127.0.0.1:8545"
    chain_id = 31337
    vault = "0x..."
    start_block = 1               # the vault's deployment block (read from there on)
    tokens = { "0x<BaasToken>" = 1 }   # token address -> asset index (1 = BAAS)

    [deposits.live]               # the live vault: the configured one, never a dev chain
    ...

Per mode, as issue 15 asks: live mode credits only from the configured live vault; test mode
only from its own development-chain vault (``chain_id`` in :data:`DEV_CHAIN_IDS`), and a live
vault on a development chain is refused -- so test tokens minted for free on anvil can never
become live BAAS. A token's ledger is its asset index in the vault's mode
(:func:`business.identity.ids.ledger_number`), so the mode is in every credited ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from business.identity.ids import ASSET_INDEX_PARTNER_MIN, Mode, ledger_number
from node.chain.deposits import DepositSettings
from node.errors import ConfigError

__all__ = ["DEV_CHAIN_IDS", "DepositVault", "DepositsConfig", "deposits_from_table"]

DEV_CHAIN_IDS = frozenset({31337, 1337, 131277322940537})  # anvil, geth --dev, eth-tester
_ADDRESS_HEX_CHARS = 40


def address_bytes(value: object, what: str) -> bytes:
    """The 20 bytes of a ``0x`` + 40 hex address."""
    if not isinstance(value, str) or not value.startswith("0x") or len(value) != 42:
        raise ConfigError(f"{what} must be a 0x address of {_ADDRESS_HEX_CHARS} hex digits")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise ConfigError(f"{what} must be a 0x address of 40 hex digits") from exc


@dataclass(frozen=True, slots=True)
class DepositVault:
    """One mode's vault: where it is and which tokens credit which asset."""

    rpc_url: str
    chain_id: int
    vault: str  # 0x address
    tokens: Mapping[str, int]  # 0x token address -> platform asset index (1 = BAAS)
    start_block: int = 1  # read from here when the state holds no cursor yet

    def validate(self, mode: Mode) -> None:
        where = f"deposits.{mode.name.lower()}"
        if not isinstance(self.rpc_url, str) or not self.rpc_url.startswith(
            ("http://", "https://")
        ):
            raise ConfigError(f"{where}.rpc_url must be http(s)://...")
        if type(self.chain_id) is not int or self.chain_id <= 0:
            raise ConfigError(f"{where}.chain_id must be a positive integer")
        dev = self.chain_id in DEV_CHAIN_IDS
        if mode == Mode.TEST and not dev:
            raise ConfigError(f"{where}: test mode credits only a development chain's vault")
        if mode == Mode.LIVE and dev:
            raise ConfigError(f"{where}: the live vault is never on a development chain")
        address_bytes(self.vault, f"{where}.vault")
        if not isinstance(self.tokens, Mapping) or not self.tokens:
            raise ConfigError(f"{where}.tokens must register at least one token")
        for token, index in self.tokens.items():
            address_bytes(token, f"{where}.tokens address")
            if type(index) is not int or not 0 < index < ASSET_INDEX_PARTNER_MIN:
                raise ConfigError(f"{where}.tokens: asset index 1..15 (a platform asset)")
        if type(self.start_block) is not int or self.start_block < 1:
            raise ConfigError(f"{where}.start_block must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class DepositsConfig:
    enabled: bool = False
    test: DepositVault | None = None
    live: DepositVault | None = None
    confirmations: int = 12
    reorg_depth_max: int = 64  # blocks kept to detect a reorganisation (>= confirmations)
    poll_interval_s: float = 1.0
    rpc_timeout_s: float = 10.0
    log_range_blocks_max: int = 500  # blocks per eth_getLogs
    pending_deposits_max: int = 4096  # deposits waiting for confirmations or their credit
    block_logs_max: int = 1024  # Deposited logs taken from one block
    credit_retry_polls: int = 10  # ask again for a credit not committed after this many polls
    rounds_per_poll_max: int = 16  # polling rounds per period (a long catch-up yields)
    credits_per_write_max: int = 64  # credits proposed in one coordinator write
    wallets_scan_max: int = 100_000  # wallets read to find a deposit's address in the state
    alarms_kept_max: int = 64  # recent alarms kept for status
    credit_timeout_s: float = 10.0  # one write of credits through the log

    def validate(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("deposits.enabled must be true or false")
        for f in fields(self):
            if f.name in ("enabled", "test", "live"):
                continue
            value = getattr(self, f.name)
            integers = f.type in ("int", int)
            number = isinstance(value, int) or (not integers and isinstance(value, float))
            if isinstance(value, bool) or not number or not math.isfinite(value) or value <= 0:
                what = "a positive integer" if integers else "a positive number"
                raise ConfigError(f"deposits.{f.name} must be {what}")
        if not self.enabled:
            return
        if self.test is None and self.live is None:
            raise ConfigError("deposits.enabled needs a [deposits.test] or [deposits.live] vault")
        for mode, vault in self.vaults():
            vault.validate(mode)
            self.tracker_settings(mode, vault).validate()

    def vaults(self) -> list[tuple[Mode, DepositVault]]:
        found = ((Mode.TEST, self.test), (Mode.LIVE, self.live))
        return [(mode, vault) for mode, vault in found if vault is not None]

    def tracker_settings(self, mode: Mode, vault: DepositVault) -> DepositSettings:
        """The pure tracker's settings for one mode's vault."""
        return DepositSettings(
            chain_id=vault.chain_id,
            vault=address_bytes(vault.vault, "vault"),
            mode=mode,
            tokens={
                address_bytes(t, "token"): ledger_number(mode, i) for t, i in vault.tokens.items()
            },
            confirmations=self.confirmations,
            reorg_depth_max=self.reorg_depth_max,
            pending_deposits_max=self.pending_deposits_max,
            block_logs_max=self.block_logs_max,
            log_range_blocks_max=self.log_range_blocks_max,
            credit_retry_ticks=self.credit_retry_polls,
        )


def deposits_from_table(table: dict[str, Any]) -> DepositsConfig:
    """Build and validate the settings from a TOML ``[deposits]`` table (unknown keys refused)."""
    known = {f.name for f in fields(DepositsConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[deposits] unknown keys: {', '.join(unknown)}")
    values: dict[str, Any] = dict(table)
    for mode in ("test", "live"):
        raw = values.get(mode)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"[deposits.{mode}] must be a table")
        vault_known = {f.name for f in fields(DepositVault)}
        extra = sorted(set(raw) - vault_known)
        missing = sorted({"rpc_url", "chain_id", "vault", "tokens"} - set(raw))
        if extra or missing:
            raise ConfigError(f"[deposits.{mode}] unknown keys {extra}, missing keys {missing}")
        values[mode] = DepositVault(**raw)
    settings = DepositsConfig(**values)
    settings.validate()
    return settings
