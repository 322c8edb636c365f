"""The EIP-712 messages users sign, and the deterministic recovery of their signer.

Users hold an Ethereum key pair; the address is their wallet (and later receives withdrawals).
They sign typed data (EIP-712), which wallets such as MetaMask show field by field, under the
domain ``{name: "BaaS B&P network", version: "1", chainId: <configured>}``. There is no
``verifyingContract``: these approvals are checked by the network's replicated state machine,
not by a contract, and EIP-712 allows leaving the field out. Name and version keep them apart
from every other dapp's messages; ``chainId`` keeps a deployment on one chain apart from one on
another; the ``mode`` field inside each message keeps test apart from live.

The messages (every field is opaque: the replicated log never carries a name)::

    Link(bytes16 partner,uint8 mode,bytes32 userRef,address wallet,uint64 deadline,bytes32 nonce)
    Unlink(bytes16 partner,uint8 mode,bytes32 userRef,address wallet,uint64 deadline,bytes32 nonce)
    Approve(uint8 mode,bytes32 operation,address wallet,uint64 deadline)
    CodeIssue(uint8 mode,bytes32 codeHash,uint32 ledger,uint128 amountLimit,uint64 expiry,
              address wallet)

Deadlines and expiries are Unix seconds (the convention of EIP-2612 permits), compared with
the leader-stamped log time, never a local clock.

Why not ``encode_typed_data`` in apply: it parses and validates the generic type description on
every call (~0.3 ms here, more than the recovery itself). The types above are fixed, so their
type hashes are computed once and each message is 32-byte words hashed with Keccak-256 exactly
as EIP-712 specifies; ``tests/test_identity_eip712.py`` checks every message against
``eth_account.messages.encode_typed_data`` and ``Account.recover_message`` (random fields,
hypothesis). The signer is recovered with ``eth_keys`` (the library eth-account itself calls;
its libsecp256k1 backend through ``coincurve``, chosen once at import). Signatures must be 65 bytes
``r || s || v`` with ``v`` 27/28 (or 0/1) and a low ``s`` (EIP-2): anything else is refused, so
each approval has one encoding. Recovery is a pure function of the bytes: every replica gets
the same signer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

from eth_keys.backends import get_backend
from eth_keys.datatypes import Signature
from eth_keys.exceptions import BadSignature
from eth_utils.crypto import keccak
from eth_utils.exceptions import ValidationError

__all__ = [
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "SIGNATURE_BYTES",
    "Approve",
    "CodeIssue",
    "Link",
    "Unlink",
    "domain_separator",
    "recover_digest_signer",
    "recover_signer",
    "typed_data",
]

DOMAIN_NAME = "BaaS B&P network"
DOMAIN_VERSION = "1"
SIGNATURE_BYTES = 65
# eth-keys picks its backend (libsecp256k1 through coincurve when installed, else pure Python)
# on every call unless given one: reading the environment and building a backend object each
# time. Both backends recover the same signer; pick once.
_BACKEND = get_backend()
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_DOMAIN_TYPE = b"EIP712Domain(string name,string version,uint256 chainId)"
_FIELDS = {
    "Link": (
        ("partner", "bytes16"),
        ("mode", "uint8"),
        ("userRef", "bytes32"),
        ("wallet", "address"),
        ("deadline", "uint64"),
        ("nonce", "bytes32"),
    ),
    "Approve": (
        ("mode", "uint8"),
        ("operation", "bytes32"),
        ("wallet", "address"),
        ("deadline", "uint64"),
    ),
    "CodeIssue": (
        ("mode", "uint8"),
        ("codeHash", "bytes32"),
        ("ledger", "uint32"),
        ("amountLimit", "uint128"),
        ("expiry", "uint64"),
        ("wallet", "address"),
    ),
}
_FIELDS["Unlink"] = _FIELDS["Link"]


def _type_string(name: str) -> bytes:
    return f"{name}({','.join(f'{t} {n}' for n, t in _FIELDS[name])})".encode()


_TYPE_HASH = {name: keccak(_type_string(name)) for name in _FIELDS}


def _word(kind: str, value: bytes | int) -> bytes:
    if isinstance(value, int):
        return value.to_bytes(32, "big")
    if kind == "address":
        return bytes(12) + value
    return value + bytes(32 - len(value))  # bytesN is right-padded


@functools.lru_cache(maxsize=8)  # one chain id per deployment: four Keccaks saved per message
def domain_separator(chain_id: int) -> bytes:
    return keccak(
        keccak(_DOMAIN_TYPE)
        + keccak(DOMAIN_NAME.encode())
        + keccak(DOMAIN_VERSION.encode())
        + chain_id.to_bytes(32, "big")
    )


class _Message:
    """Base of the typed messages: field values in the order of ``_FIELDS[type]``."""

    type_name: ClassVar[str] = ""

    def values(self) -> tuple[bytes | int, ...]:
        raise NotImplementedError

    def struct_hash(self) -> bytes:
        fields = _FIELDS[self.type_name]
        body = b"".join(_word(t, v) for (_, t), v in zip(fields, self.values(), strict=True))
        return keccak(_TYPE_HASH[self.type_name] + body)

    def digest(self, chain_id: int) -> bytes:
        """The 32 bytes the user's key signs (``0x1901 || domain || struct``)."""
        return keccak(b"\x19\x01" + domain_separator(chain_id) + self.struct_hash())


@dataclass(frozen=True, slots=True)
class Link(_Message):
    partner: bytes  # 16
    mode: int
    user_ref: bytes  # 32
    wallet: bytes  # 20, the address
    deadline: int  # Unix s
    nonce: bytes  # 32
    type_name: ClassVar[str] = "Link"

    def values(self) -> tuple[bytes | int, ...]:
        return (self.partner, self.mode, self.user_ref, self.wallet, self.deadline, self.nonce)


@dataclass(frozen=True, slots=True)
class Unlink(Link):
    type_name: ClassVar[str] = "Unlink"


@dataclass(frozen=True, slots=True)
class Approve(_Message):
    mode: int
    operation: bytes  # 32, the operation's digest
    wallet: bytes
    deadline: int
    type_name: ClassVar[str] = "Approve"

    def values(self) -> tuple[bytes | int, ...]:
        return (self.mode, self.operation, self.wallet, self.deadline)


@dataclass(frozen=True, slots=True)
class CodeIssue(_Message):
    mode: int
    code_hash: bytes  # 32
    ledger: int
    amount_limit: int
    expiry: int  # Unix s
    wallet: bytes
    type_name: ClassVar[str] = "CodeIssue"

    def values(self) -> tuple[bytes | int, ...]:
        return (
            self.mode,
            self.code_hash,
            self.ledger,
            self.amount_limit,
            self.expiry,
            self.wallet,
        )


def typed_data(message: _Message, chain_id: int) -> dict[str, object]:
    """The full EIP-712 document of ``message`` (for wallets and clients; not used in apply)."""
    fields = _FIELDS[message.type_name]
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            message.type_name: [{"name": n, "type": t} for n, t in fields],
        },
        "primaryType": message.type_name,
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id},
        "message": {
            n: ("0x" + v.hex() if isinstance(v, bytes) else v)
            for (n, _), v in zip(fields, message.values(), strict=True)
        },
    }


def recover_signer(message: _Message, chain_id: int, signature: bytes) -> bytes | None:
    """The 20-byte address that signed ``message``, or None if the signature is not valid."""
    return recover_digest_signer(message.digest(chain_id), signature)


def recover_digest_signer(digest: bytes, signature: bytes) -> bytes | None:
    """The 20-byte address that signed the 32-byte ``digest`` (65 bytes ``r || s || v``, low
    ``s``), or None if the signature is not valid. Shared with the vault's withdrawals
    (:mod:`node.chain.vault`), whose domain also names the contract."""
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return None
    v = signature[64]
    if v >= 27:
        v -= 27
    s = int.from_bytes(signature[32:64], "big")
    if v not in (0, 1) or not 0 < s <= _SECP256K1_N // 2:
        return None
    try:
        sig = Signature(signature_bytes=signature[:64] + bytes((v,)), backend=_BACKEND)
        public = sig.recover_public_key_from_msg_hash(digest)
    except (BadSignature, ValidationError):
        return None
    address: bytes = public.to_canonical_address()
    return address
