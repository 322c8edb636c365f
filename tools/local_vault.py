"""The test-mode vault of a local cluster's development chain, and the nodes' ``[deposits]``.

:class:`tools.local_cluster.LocalCluster` calls :func:`setup_vault` right after the registry
(``./dev run``, the real-process tests): on the chain's unlocked dev accounts it deploys the
dev BaasToken and a BaasVault (:func:`node.chain.contracts.deploy_dev_vault`: the anchoring key
holders are its signing nodes, dev accounts its operators and guardians) and appends to every
node TOML a ``[deposits]`` table with the ``[deposits.test]`` vault: test mode, BAAS as asset
1, read from the block after the deployment. A chain that already has the configured vault
(a cluster started again on a chain that kept its state) keeps it.

Both dev chains mine a block a second, so the default ``confirmations`` here is small.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from web3 import Web3

from node.anchoring.chain import connect_web3, read_chain_id
from node.anchoring.keyfile import load_key_file
from node.chain.contracts import deploy_dev_vault, send
from node.errors import ConfigError
from tools.cluster_init import ClusterLayout, chain_key_relpath

__all__ = ["DEPOSITS_MARKER", "VaultOnChain", "deposits_toml", "setup_vault"]

DEPOSITS_MARKER = "# Vault deposits (docs/vault.md): written by the local cluster at start"
CONFIRMATIONS = 2
POLL_INTERVAL_S = 0.5
TOKEN_SUPPLY = 10**27
LIMIT = 10**24
WINDOW_S = 3600
DELAY_S = 86_400


@dataclass(frozen=True, slots=True)
class VaultOnChain:
    url: str
    chain_id: int
    token: str
    vault: str
    start_block: int
    depositor: str  # a dev account holding tokens to deposit (tests, demos)
    deployed: bool


def deposits_toml(
    url: str, chain_id: int, token: str, vault: str, start_block: int, extra: dict[str, Any]
) -> str:
    """The ``[deposits]`` and ``[deposits.test]`` tables (``extra``: more [deposits] keys)."""
    settings = {"confirmations": CONFIRMATIONS, "poll_interval_s": POLL_INTERVAL_S, **extra}
    lines = [
        "",
        DEPOSITS_MARKER,
        "[deposits]",
        "enabled = true",
        *(f"{key} = {value!r}" for key, value in settings.items()),
        "",
        "[deposits.test]",
        f'rpc_url = "{url}"',
        f"chain_id = {chain_id}",
        f'vault = "{vault}"',
        f"start_block = {start_block}",
        f'tokens = {{ "{token}" = 1 }}',
        "",
    ]
    return "\n".join(lines)


def _configured(path: Path) -> dict[str, Any]:
    try:
        table = tomllib.loads(path.read_text()).get("deposits", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    test = table.get("test") if isinstance(table, dict) else None
    return test if isinstance(test, dict) else {}


def setup_vault(layout: ClusterLayout, extra: dict[str, Any] | None = None) -> VaultOnChain:
    """Deploy (or keep) the dev vault and point every node's ``[deposits]`` at it."""
    url = layout.chain.url
    w3 = connect_web3(url)
    chain_id = read_chain_id(w3)
    accounts = [str(a) for a in w3.eth.accounts]
    if len(accounts) < 7:
        raise ConfigError("the development chain has fewer than 7 unlocked accounts")
    first = Path(layout.nodes[0].config_path)
    known = _configured(first)
    vault, token = str(known.get("vault", "")), str(next(iter(known.get("tokens", {})), ""))
    same_chain = bool(vault) and known.get("chain_id") == chain_id
    deployed = not (same_chain and w3.eth.get_code(Web3.to_checksum_address(vault)))
    if deployed:
        signers = [
            load_key_file(Path(layout.directory) / chain_key_relpath(n)).address
            for n in layout.chain.anchor_nodes
        ] or accounts[7:9]
        stack = deploy_dev_vault(
            w3,
            deployer=accounts[0],
            operators=accounts[1:4],
            operator_threshold=2,
            signers=signers,
            threshold=min(2, len(signers)),
            guardians=accounts[4:6],
            delay_s=DELAY_S,
            token_supply=TOKEN_SUPPLY,
            limit=LIMIT,
            window_s=WINDOW_S,
        )
        vault, token = str(stack.vault.address), str(stack.token.address)
        # The depositor gets a quarter of the supply to deposit with.
        send(stack.token.functions.transfer(accounts[6], TOKEN_SUPPLY // 4), accounts[0])
        start_block = int(w3.eth.block_number) + 1
        text = deposits_toml(url, chain_id, token, vault, start_block, extra or {})
        for node in layout.nodes:
            _rewrite(Path(node.config_path), text)
    else:
        start_block = int(known.get("start_block", 1))
    return VaultOnChain(url, chain_id, token, vault, start_block, accounts[6], deployed)


def _rewrite(path: Path, deposits: str) -> None:
    """Replace what follows the marker (or append): the deposits tables are the file's last."""
    text = path.read_text()
    at = text.find("\n" + DEPOSITS_MARKER)
    kept = text if at < 0 else text[:at]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(kept.rstrip("\n") + "\n" + deposits)
    os.replace(tmp, path)
