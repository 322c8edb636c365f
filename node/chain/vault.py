"""The vault's EIP-712 withdrawals: build, hash, sign and check them (pure; no web3, no clock).

What the BaasVault contract (``contracts/BaasVault.sol``) verifies, computed the same way here so
a signing node can check a withdrawal before it signs and anyone can check a signature off
chain. Two digests, both EIP-712 under the domain
``{name: "BaaS B&P network", version: "1", chainId, verifyingContract: <vault>}`` (the name and
version of :mod:`business.identity.eip712`; the contract's address added because a contract
checks these signatures, so a signature for one vault or chain is worthless on another):

* the **user** signs one withdrawal, :data:`WITHDRAWAL_TYPE`:
  ``Withdrawal(bytes32 id,address token,uint256 amount,address user,address to,``
  ``bytes16 wallet,uint64 deadline)``;
* the **signing nodes** sign the whole transaction's batch once:
  ``WithdrawalBatch(Withdrawal[] withdrawals)`` (EIP-712's array encoding: the Keccak of the
  concatenated struct hashes), sorted by signer address strictly increasing in the call.

``tests/test_vault_contract.py`` checks both digests against the contract's own
``withdrawalDigest``/``batchDigest`` and against ``eth_account``'s generic ``encode_typed_data``.

Not wired into the node yet: the deposit watcher and the withdrawal signer (issue 15, items 2
and 3) are the next step; this module is what they will call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_keys.datatypes import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from business.identity.eip712 import DOMAIN_NAME, DOMAIN_VERSION, recover_digest_signer
from node.errors import InvalidRequest

__all__ = [
    "BATCH_TYPE",
    "SIGNERS_MAX",
    "WITHDRAWALS_PER_TX_MAX",
    "WITHDRAWAL_TYPE",
    "VaultDomain",
    "Withdrawal",
    "batch_digest",
    "recover",
    "sign_digest",
    "sorted_node_signatures",
    "typed_data",
]

WITHDRAWALS_PER_TX_MAX = 64
"""Withdrawals one vault transaction may carry (the contract's ``WITHDRAWALS_PER_TX_MAX``)."""
SIGNERS_MAX = 16
"""Signing nodes a vault accepts (the contract's ``SIGNERS_MAX``)."""

WITHDRAWAL_TYPE = (
    "Withdrawal(bytes32 id,address token,uint256 amount,address user,address to,"
    "bytes16 wallet,uint64 deadline)"
)
BATCH_TYPE = "WithdrawalBatch(Withdrawal[] withdrawals)" + WITHDRAWAL_TYPE
_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
_WITHDRAWAL_TYPEHASH = keccak(WITHDRAWAL_TYPE.encode())
_BATCH_TYPEHASH = keccak(BATCH_TYPE.encode())
_UINT64_MAX = 2**64 - 1
_UINT256_MAX = 2**256 - 1


def _address(value: bytes, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != 20:
        raise InvalidRequest(f"{name} must be a 20-byte address", param=name)
    return value


@dataclass(frozen=True, slots=True)
class VaultDomain:
    """One vault on one chain: what every digest is bound to."""

    chain_id: int
    vault: bytes  # 20-byte address

    def __post_init__(self) -> None:
        if not 0 < self.chain_id <= _UINT256_MAX:
            raise InvalidRequest("chain id must be positive", param="chain_id")
        _address(self.vault, "vault")

    def separator(self) -> bytes:
        return keccak(
            keccak(_DOMAIN_TYPE)
            + keccak(DOMAIN_NAME.encode())
            + keccak(DOMAIN_VERSION.encode())
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + self.vault
        )

    def digest(self, struct_hash: bytes) -> bytes:
        return keccak(b"\x19\x01" + self.separator() + struct_hash)


@dataclass(frozen=True, slots=True)
class Withdrawal:
    """One withdrawal as the contract sees it. Addresses are 20 raw bytes; ``wallet`` is the
    ledger's 16-byte wallet id; ``deadline`` Unix seconds; ``amount`` in the token's minor
    units."""

    id: bytes  # 32
    token: bytes
    amount: int
    user: bytes
    to: bytes
    wallet: bytes  # 16
    deadline: int

    def __post_init__(self) -> None:
        if not isinstance(self.id, bytes) or len(self.id) != 32:
            raise InvalidRequest("withdrawal id must be 32 bytes", param="id")
        for name in ("token", "user", "to"):
            _address(getattr(self, name), name)
        if not isinstance(self.wallet, bytes) or len(self.wallet) != 16:
            raise InvalidRequest("wallet must be a 16-byte wallet id", param="wallet")
        if not 0 < self.amount <= _UINT256_MAX:
            raise InvalidRequest("amount must be a positive uint256", param="amount")
        if not 0 <= self.deadline <= _UINT64_MAX:
            raise InvalidRequest("deadline must be a uint64", param="deadline")

    def struct_hash(self) -> bytes:
        return keccak(
            _WITHDRAWAL_TYPEHASH
            + self.id
            + bytes(12)
            + self.token
            + self.amount.to_bytes(32, "big")
            + bytes(12)
            + self.user
            + bytes(12)
            + self.to
            + self.wallet
            + bytes(16)  # bytesN is right-padded
            + self.deadline.to_bytes(32, "big")
        )

    def digest(self, domain: VaultDomain) -> bytes:
        """The 32 bytes the user's key signs."""
        return domain.digest(self.struct_hash())

    def as_abi(self) -> tuple[bytes, str, int, str, str, bytes, int]:
        """The tuple a web3 contract call takes for the ``Withdrawal`` struct."""
        return (
            self.id,
            _checksum(self.token),
            self.amount,
            _checksum(self.user),
            _checksum(self.to),
            self.wallet,
            self.deadline,
        )


def batch_digest(domain: VaultDomain, withdrawals: Sequence[Withdrawal]) -> bytes:
    """The 32 bytes every signing node signs for one vault transaction."""
    if not 0 < len(withdrawals) <= WITHDRAWALS_PER_TX_MAX:
        raise InvalidRequest(
            f"a vault transaction carries 1..{WITHDRAWALS_PER_TX_MAX} withdrawals",
            param="withdrawals",
        )
    hashes = b"".join(w.struct_hash() for w in withdrawals)
    return domain.digest(keccak(_BATCH_TYPEHASH + keccak(hashes)))


def sign_digest(private_key: bytes, digest: bytes) -> bytes:
    """65 bytes ``r || s || v`` (v 27/28, low s, as the contract's ECDSA requires)."""
    signature = PrivateKey(private_key).sign_msg_hash(digest)
    raw: bytes = signature.to_bytes()
    return raw[:64] + bytes((raw[64] + 27,))


def recover(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte signer of ``digest``, or None for a malformed or high-s signature."""
    return recover_digest_signer(digest, signature)


def sorted_node_signatures(
    digest: bytes, signatures: Sequence[bytes], signers: Sequence[bytes], threshold: int
) -> tuple[bytes, ...]:
    """The signatures to send, in the contract's order (signer address strictly increasing):
    invalid ones, those of non-signers and duplicates of one signer are dropped. Raises
    InvalidRequest when fewer than ``threshold`` remain (the contract would refuse)."""
    allowed = set(signers)
    by_signer: dict[bytes, bytes] = {}
    for signature in signatures:
        signer = recover(digest, signature)
        if signer is not None and signer in allowed:
            by_signer.setdefault(signer, signature)
    if len(by_signer) < threshold:
        raise InvalidRequest(
            f"{len(by_signer)} valid node signatures, {threshold} needed", param="signatures"
        )
    return tuple(by_signer[signer] for signer in sorted(by_signer))


def typed_data(domain: VaultDomain, withdrawal: Withdrawal) -> dict[str, object]:
    """The full EIP-712 document a wallet shows the user for ``withdrawal``."""
    fields = [part.split(" ") for part in WITHDRAWAL_TYPE[len("Withdrawal(") : -1].split(",")]
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "Withdrawal": [{"name": name, "type": kind} for kind, name in fields],
        },
        "primaryType": "Withdrawal",
        "domain": {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": domain.chain_id,
            "verifyingContract": _checksum(domain.vault),
        },
        "message": {
            "id": "0x" + withdrawal.id.hex(),
            "token": _checksum(withdrawal.token),
            "amount": withdrawal.amount,
            "user": _checksum(withdrawal.user),
            "to": _checksum(withdrawal.to),
            "wallet": "0x" + withdrawal.wallet.hex(),
            "deadline": withdrawal.deadline,
        },
    }


def _checksum(address: bytes) -> str:
    return str(to_checksum_address(address))
