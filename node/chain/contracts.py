"""The vault's contracts over web3: artifacts, deployment on development chains, calls.

The artifacts (ABI + bytecode of ``BaasToken``, ``BaasVault``, ``OperatorMultisig`` and
OpenZeppelin's ``TimelockController``) are compiled from ``contracts/`` by
``contracts/compile.mjs`` with the pinned solc and committed; CI recompiles and byte-compares
them. Errors cross the border as in :mod:`node.anchoring.chain`: a revert is a
:class:`~node.anchoring.chain.ChainRejected` (``chain_reverted``) whose ``revert`` names the
contract's custom error, decoded with every one of these contracts' errors.

:func:`deploy_dev_vault` sets up what a development chain (eth-tester, anvil) needs, in the
order a production deployment follows too: the token (dev chains only; a public chain
configures the real BAAS address), the operators' multisig, the timelock whose only proposer
and canceller is that multisig (executing is open to anyone once the delay has passed), the
vault configured by its deployer, then ownership handed to the timelock, after which the
deployer can change nothing. Transactions come from the chain's unlocked dev accounts.

The local cluster deploys its dev vault with it (tools/local_vault.py); the nodes read the
vault's deposits (node/chain/deposit_watch.py); withdrawals (issue 15 item 3) are next.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.types import TxReceipt

from node.anchoring.chain import (
    RPC_TIMEOUT_S,
    ChainRejected,
    ErrorTable,
    border,
    error_table,
)

__all__ = [
    "ARTIFACTS",
    "DevVault",
    "contract_at",
    "deploy",
    "deploy_dev_vault",
    "is_role_member",
    "load_artifact",
    "send",
    "vault_errors",
]

ARTIFACTS = ("BaasToken", "BaasVault", "OperatorMultisig", "TimelockController")
_PROPOSER_ROLE = Web3.keccak(text="PROPOSER_ROLE")
_CANCELLER_ROLE = Web3.keccak(text="CANCELLER_ROLE")


@cache
def load_artifact(name: str) -> dict[str, Any]:
    """The committed artifact of contract ``name`` (one of :data:`ARTIFACTS`)."""
    if name not in ARTIFACTS:
        raise KeyError(name)
    text = resources.files("node.chain").joinpath("artifacts", f"{name}.json").read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


@cache
def vault_errors() -> ErrorTable:
    """Every custom error these contracts (and the OpenZeppelin code in them) can revert with."""
    return error_table(*(load_artifact(name)["abi"] for name in ARTIFACTS))


def contract_at(w3: Web3, name: str, address: str) -> Contract:
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact(name)["abi"]
    )


def send(call: ContractFunction, sender: str, *, gas: int | None = None) -> TxReceipt:
    """Send ``call`` from the unlocked account ``sender`` and wait for it to be mined.

    Without ``gas`` web3 estimates it first, so a call that would revert raises
    ChainRejected with the decoded error and sends nothing. With ``gas`` the transaction is
    sent as is and its receipt returned even when it reverted (status 0)."""
    w3 = call.w3
    params: dict[str, Any] = {"from": Web3.to_checksum_address(sender)}
    if gas is not None:
        params["gas"] = gas
    with border(call.fn_name, vault_errors()):
        tx_hash = call.transact(params)  # type: ignore[arg-type]
        receipt: TxReceipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_S)
    return receipt


def deploy(w3: Web3, name: str, args: Sequence[Any], sender: str) -> Contract:
    """Deploy contract ``name`` with constructor ``args`` from the unlocked ``sender``."""
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    with border(f"deploy {name}", vault_errors()):
        tx_hash = factory.constructor(*args).transact({"from": Web3.to_checksum_address(sender)})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RPC_TIMEOUT_S)
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise ChainRejected(f"deploying {name} reverted", code="chain_reverted")
    return contract_at(w3, name, str(address))


@dataclass(frozen=True)
class DevVault:
    """A vault stack on a development chain (web3 contract handles)."""

    token: Contract
    vault: Contract
    multisig: Contract
    timelock: Contract
    deployer: str
    delay_s: int


def deploy_dev_vault(
    w3: Web3,
    *,
    deployer: str,
    operators: Sequence[str],
    operator_threshold: int,
    signers: Sequence[str],
    threshold: int,
    guardians: Sequence[str],
    delay_s: int,
    token_supply: int,
    limit: int,
    window_s: int,
) -> DevVault:
    """Deploy token, multisig, timelock and vault; register the token with ``limit`` per
    ``window_s``; hand the vault to the timelock. ``operators`` and ``signers`` in any order
    (the contracts want them sorted)."""
    cs = Web3.to_checksum_address
    ops = sorted((cs(a) for a in operators), key=lambda a: int(a, 16))
    nodes = sorted((cs(a) for a in signers), key=lambda a: int(a, 16))
    token = deploy(w3, "BaasToken", [cs(deployer), token_supply], deployer)
    multisig = deploy(w3, "OperatorMultisig", [ops, operator_threshold], deployer)
    # Proposer and canceller: the multisig only. Executor: anyone (address 0), once the delay
    # has passed and the call was scheduled by the multisig. Admin: none (self-administered).
    zero = "0x" + "00" * 20
    timelock = deploy(
        w3,
        "TimelockController",
        [delay_s, [multisig.address], [zero], zero],
        deployer,
    )
    vault = deploy(
        w3,
        "BaasVault",
        [cs(deployer), nodes, threshold, [cs(g) for g in guardians]],
        deployer,
    )
    send(vault.functions.setTokenRule(token.address, True, limit, window_s), deployer)
    send(vault.functions.transferOwnership(timelock.address), deployer)
    return DevVault(token, vault, multisig, timelock, cs(deployer), delay_s)


def is_role_member(timelock: Contract, role: str, account: str) -> bool:
    """Whether ``account`` holds the timelock role named ``role`` ("proposer"/"canceller")."""
    role_id = {"proposer": _PROPOSER_ROLE, "canceller": _CANCELLER_ROLE}[role]
    return bool(timelock.functions.hasRole(role_id, Web3.to_checksum_address(account)).call())
