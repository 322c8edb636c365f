"""The node's ``[deposits]`` table (node/chain/deposit_config.py): per mode, the live vault is
never a development chain's and test mode credits only a development chain's vault; bounds
and unknown keys refused at start."""

from __future__ import annotations

from typing import Any

import pytest

from business.identity.ids import Mode
from node.chain.deposit_config import deposits_from_table
from node.errors import ConfigError

VAULT = "0x" + "5a" * 20
TOKEN = "0x" + "70" * 20


def vault(chain_id: int, **extra: Any) -> dict[str, Any]:
    return {
        "rpc_url": "http://127.0.0.1:8545",
        "chain_id": chain_id,
        "vault": VAULT,
        "tokens": {TOKEN: 1},
        **extra,
    }


def test_a_test_vault_on_a_dev_chain_gives_the_trackers_settings() -> None:
    config = deposits_from_table({"enabled": True, "confirmations": 3, "test": vault(31337)})
    ((mode, found),) = config.vaults()
    settings = config.tracker_settings(mode, found)
    assert mode == Mode.TEST and settings.tokens == {bytes.fromhex("70" * 20): 2}  # test BAAS
    assert settings.confirmations == 3 and settings.vault == bytes.fromhex("5a" * 20)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"enabled": True, "test": vault(1)}, "development chain"),
        ({"enabled": True, "live": vault(31337)}, "never on a development chain"),
        ({"enabled": True}, "needs a [deposits.test] or [deposits.live]"),
        ({"enabled": True, "test": vault(31337, tokens={TOKEN: 16})}, "asset index 1..15"),
        ({"enabled": True, "test": vault(31337, start_block=0)}, "start_block"),
        ({"enabled": True, "test": vault(31337), "confirmations": 65}, "reorg_depth_max"),
        ({"enabled": True, "test": {"rpc_url": "http://x", "vault": VAULT}}, "missing keys"),
        ({"pending_deposits_max": 0}, "pending_deposits_max must be a positive integer"),
        ({"poll_every": 1}, "unknown keys: poll_every"),
    ],
)
def test_bad_tables_are_refused_at_start(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        deposits_from_table(table)


def test_a_live_vault_on_its_own_chain_is_taken() -> None:
    config = deposits_from_table({"enabled": True, "live": vault(1)})
    ((mode, found),) = config.vaults()
    assert mode == Mode.LIVE
    assert set(config.tracker_settings(mode, found).tokens.values()) == {3}  # live BAAS
