"""A vault stack on a test chain, with its keys, for the vault's contract tests and its bench.

:func:`vault_world` deploys :func:`node.chain.contracts.deploy_dev_vault` on ``w3`` (eth-tester or
a real anvil) with the chain's unlocked dev accounts as deployer, operators, guardians, a
depositor and the node that sends withdrawals; the signing nodes and the users are fresh keys
that only sign digests. :meth:`VaultWorld.withdrawal` builds and signs what the nodes would.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_keys.datatypes import PrivateKey
from web3 import Web3
from web3.logs import DISCARD
from web3.types import TxReceipt

from node.anchoring.chain import ChainRejected, Revert
from node.chain.contracts import DevVault, deploy_dev_vault, send
from node.chain.vault import VaultDomain, Withdrawal, batch_digest, sign_digest

SUPPLY = 10**27
LIMIT = 10**24
WINDOW_S = 3600
DELAY_S = 86_400


@dataclass(frozen=True)
class Key:
    private: bytes
    address: bytes

    @staticmethod
    def new() -> Key:
        private = os.urandom(32)
        return Key(private, PrivateKey(private).public_key.to_canonical_address())

    @property
    def hex(self) -> str:
        return str(Web3.to_checksum_address(self.address))


@dataclass
class VaultWorld:
    w3: Web3
    stack: DevVault
    deployer: str
    operators: tuple[str, ...]
    guardians: tuple[str, ...]
    depositor: str
    sender: str
    stranger: str
    nodes: tuple[Key, ...]
    domain: VaultDomain
    next_id: int = 1

    @property
    def vault(self) -> Any:
        return self.stack.vault

    @property
    def token(self) -> Any:
        return self.stack.token

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def balance(self, address: str | bytes) -> int:
        return int(self.token.functions.balanceOf(Web3.to_checksum_address(address)).call())

    def withdrawal(
        self,
        user: Key,
        amount: int,
        *,
        to: bytes | None = None,
        token: str | None = None,
        id_: bytes | None = None,
        deadline: int | None = None,
    ) -> Withdrawal:
        if id_ is None:
            id_ = self.next_id.to_bytes(32, "big")
            self.next_id += 1
        return Withdrawal(
            id=id_,
            token=bytes.fromhex((token or self.token.address)[2:]),
            amount=amount,
            user=user.address,
            to=to if to is not None else user.address,
            wallet=user.address[:16],
            deadline=deadline if deadline is not None else self.now() + 3600,
        )

    def node_sigs(
        self,
        ws: Sequence[Withdrawal],
        keys: Sequence[Key] | None = None,
        domain: VaultDomain | None = None,
    ) -> list[bytes]:
        """The signatures of ``keys`` (default: the first two nodes) over the batch, sorted by
        signer address as the contract wants."""
        chosen = sorted(keys if keys is not None else self.nodes[:2], key=lambda k: k.address)
        digest = batch_digest(domain or self.domain, ws)
        return [sign_digest(k.private, digest) for k in chosen]

    def call(
        self, ws: Sequence[Withdrawal], user_sigs: Sequence[bytes], node_sigs: Sequence[bytes]
    ) -> Any:
        return self.vault.functions.withdraw(
            [w.as_abi() for w in ws], list(user_sigs), list(node_sigs)
        )

    def withdraw(
        self,
        ws: Sequence[Withdrawal],
        users: Sequence[Key],
        *,
        node_keys: Sequence[Key] | None = None,
    ) -> TxReceipt:
        user_sigs = [
            sign_digest(u.private, w.digest(self.domain)) for w, u in zip(ws, users, strict=True)
        ]
        return send(self.call(ws, user_sigs, self.node_sigs(ws, node_keys)), self.sender)


def vault_world(w3: Web3, *, threshold: int = 2, node_count: int = 3) -> VaultWorld:
    accounts = [str(a) for a in w3.eth.accounts]
    nodes = tuple(Key.new() for _ in range(node_count))
    stack = deploy_dev_vault(
        w3,
        deployer=accounts[0],
        operators=accounts[1:4],
        operator_threshold=2,
        signers=[k.hex for k in nodes],
        threshold=threshold,
        guardians=accounts[4:6],
        delay_s=DELAY_S,
        token_supply=SUPPLY,
        limit=LIMIT,
        window_s=WINDOW_S,
    )
    world = VaultWorld(
        w3=w3,
        stack=stack,
        deployer=accounts[0],
        operators=tuple(accounts[1:4]),
        guardians=tuple(accounts[4:6]),
        depositor=accounts[6],
        sender=accounts[7],
        stranger=accounts[8],
        nodes=nodes,
        domain=VaultDomain(int(w3.eth.chain_id), bytes.fromhex(stack.vault.address[2:])),
    )
    # The vault holds half the supply (as if deposited), the depositor some to deposit.
    send(stack.token.functions.transfer(stack.vault.address, SUPPLY // 2), accounts[0])
    send(stack.token.functions.transfer(world.depositor, SUPPLY // 4), accounts[0])
    return world


def rejected(call: Any, sender: str) -> Revert:
    """``call`` is refused (gas estimation reverts: nothing is sent); its decoded error."""
    try:
        send(call, sender)
    except ChainRejected as exc:
        assert exc.code == "chain_reverted", exc
        assert exc.revert is not None, exc
        return exc.revert
    raise AssertionError("the call did not revert")


def advance(w3: Web3, seconds: int) -> None:
    """Move the chain's clock ``seconds`` ahead and mine a block (eth-tester or anvil)."""
    provider: Any = w3.provider
    tester = getattr(provider, "ethereum_tester", None)
    if tester is not None:
        tester.time_travel(int(w3.eth.get_block("latest")["timestamp"]) + seconds)
        tester.mine_blocks()
        return
    provider.make_request("evm_increaseTime", [seconds])
    provider.make_request("evm_mine", [])


def timelocked(world: VaultWorld, call: Any, salt: bytes) -> tuple[Any, Any]:
    """Schedule ``call`` on the vault through the multisig (two operators) and the timelock;
    returns (the timelock's execute call, the multisig proposal id)."""
    data = call._encode_transaction_data()
    vault = world.vault.address
    timelock = world.stack.timelock
    zero = bytes(32)
    schedule = timelock.functions.schedule(vault, 0, data, zero, salt, world.stack.delay_s)
    encoded = schedule._encode_transaction_data()
    multisig = world.stack.multisig
    receipt = send(multisig.functions.propose(timelock.address, 0, encoded), world.operators[0])
    (proposed,) = multisig.events.Proposed().process_receipt(receipt, errors=DISCARD)
    proposal_id = proposed["args"]["id"]
    op_id = timelock.functions.hashOperation(vault, 0, data, zero, salt).call()
    assert not timelock.functions.isOperation(op_id).call()  # one operator is not enough
    send(multisig.functions.approve(proposal_id), world.operators[1])
    assert timelock.functions.isOperationPending(op_id).call()
    return timelock.functions.execute(vault, 0, data, zero, salt), proposal_id
