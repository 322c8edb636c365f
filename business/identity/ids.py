"""Domain-separated ids: every id the business layer derives, from one hash construction.

Why: a partner's ``Idempotency-Key`` is chosen by the partner, so the same key will be reused
on another route, by another partner, or in the other mode. Each derived id therefore hashes
a fixed *tag* naming what it is (``baas/op/v1``, ``baas/ledger-transfer/v1``, ...) together
with every input that scopes it, so two ids of different kinds, partners, modes or routes can
only be equal if SHA-256 collides. Each field is length-prefixed (4-byte big-endian length),
so ``("ab", "c")`` and ``("a", "bc")`` never hash alike; the tag is length-prefixed too.

What is derived here (all pure functions of their inputs):

* :func:`partner_id` -- a partner's opaque 16-byte id from its name (the state never holds
  the name);
* :func:`operation_id` -- the record id of one operation: ``H(op, partner, mode, kind, key)``;
* :func:`transfer_id` / :func:`account_id` -- ledger u128 ids from the same inputs plus the
  event's index within the operation (never 0 or 2^128-1, TigerBeetle's reserved ids);
* :func:`wallet_id` -- a wallet's 16-byte id from its Ethereum address and the mode;
* :func:`wallet_account_id` -- the wallet's account on one ledger, ``H(wallet, mode, ledger)``;
* :func:`partner_account_id` -- a partner's system account for one role on one ledger;
* :func:`user_ref` -- ``H(partner, mode, the partner's own user id)``: the state holds this,
  never the partner's raw user id;
* :func:`code_hash` -- the hash of a one-time code a user issued (the state holds the hash);
* :func:`ledger_number` -- the u32 ledger of an asset in a mode: ``asset_index * 2 + mode bit``,
  so test and live never share a ledger number *by construction* (the parity is the mode),
  not merely with high probability. BAAS is asset index 1 (ledger 2 in test, 3 in live);
  indexes up to 15 are kept for platform assets; a partner's point asset gets the next free
  index at onboarding (:mod:`business.identity.core`), one ledger per mode, and from log
  feature 12 each token a partner registers gets the next free index of the same counter,
  its ledger in the mode it was registered in (node/consensus/bridge_ops.py).
"""

from __future__ import annotations

import enum
import hashlib

from node.errors import InvalidRequest

__all__ = [
    "ASSET_INDEX_BAAS",
    "ASSET_INDEX_PARTNER_MIN",
    "ID_MAX",
    "Mode",
    "account_id",
    "code_hash",
    "derive",
    "ledger_number",
    "mode_of_ledger",
    "operation_id",
    "partner_account_id",
    "partner_id",
    "transfer_id",
    "user_ref",
    "wallet_account_id",
    "wallet_id",
]

ID_MAX = (1 << 128) - 1
U32_MAX = (1 << 32) - 1
ASSET_INDEX_BAAS = 1
ASSET_INDEX_PARTNER_MIN = 16  # 1..15 are the platform's (BAAS, later platform tokens)
ASSET_INDEX_MAX = U32_MAX >> 1
PARTNER_NAME_CHARS_MAX = 64
KEY_CHARS_MAX = 255
KIND_CHARS_MAX = 32
USER_ID_CHARS_MAX = 255
CODE_BYTES_MIN = 16  # a one-time code must carry at least 128 bits: it is a bearer secret
CODE_BYTES_MAX = 64
INDEX_MAX = 1 << 16  # events per operation are bounded far lower by the ledger config

TAG_PARTNER = b"baas/partner/v1"
TAG_OPERATION = b"baas/op/v1"
TAG_TRANSFER = b"baas/ledger-transfer/v1"
TAG_ACCOUNT = b"baas/ledger-account/v1"
TAG_WALLET = b"baas/wallet/v1"
TAG_WALLET_ACCOUNT = b"baas/wallet-account/v1"
TAG_PARTNER_ACCOUNT = b"baas/partner-account/v1"
TAG_USER_REF = b"baas/user-ref/v1"
TAG_CODE = b"baas/one-time-code/v1"
TAG_DEPOSIT = b"baas/chain-deposit/v1"  # a vault deposit's record id (node/chain/deposits.py)
TAGS = (
    TAG_PARTNER,
    TAG_OPERATION,
    TAG_TRANSFER,
    TAG_ACCOUNT,
    TAG_WALLET,
    TAG_WALLET_ACCOUNT,
    TAG_PARTNER_ACCOUNT,
    TAG_USER_REF,
    TAG_CODE,
    TAG_DEPOSIT,
)


class Mode(enum.IntEnum):
    """Stripe's test and live mode: separate credentials, ledgers and objects."""

    TEST = 0
    LIVE = 1


def derive(tag: bytes, *fields: bytes) -> bytes:
    """SHA-256 over the length-prefixed tag and fields: the one construction behind every id."""
    h = hashlib.sha256(len(tag).to_bytes(4, "big") + tag)
    for f in fields:
        h.update(len(f).to_bytes(4, "big"))
        h.update(f)
    return h.digest()


def _u128(digest: bytes) -> int:
    # 1 + x mod (2^128 - 2) lands in [1, 2^128 - 2]: never TigerBeetle's reserved 0 or max.
    return 1 + int.from_bytes(digest[:16], "big") % (ID_MAX - 1)


def _text(value: str, chars_max: int, what: str, code: str = "field_invalid") -> bytes:
    if not isinstance(value, str) or not 0 < len(value) <= chars_max:
        raise InvalidRequest(f"{what} must be 1..{chars_max} characters", code=code)
    return value.encode()


def _mode(mode: Mode) -> bytes:
    return bytes((Mode(mode).value,))


def _bytes(value: bytes, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidRequest(f"{what} must be {size} bytes", code="field_invalid")
    return value


def partner_id(name: str) -> bytes:
    """The opaque 16-byte id of a partner (``demo-shop`` keeps its name at the gateway only)."""
    return derive(TAG_PARTNER, _text(name, PARTNER_NAME_CHARS_MAX, "partner name"))[:16]


def operation_id(partner: bytes, mode: Mode, kind: str, idempotency_key: str) -> bytes:
    """The 32-byte record id of one operation of ``kind`` (the route) under one key."""
    return derive(
        TAG_OPERATION,
        _bytes(partner, 16, "partner id"),
        _mode(mode),
        _text(kind, KIND_CHARS_MAX, "operation kind"),
        _text(idempotency_key, KEY_CHARS_MAX, "Idempotency-Key", "invalid_idempotency_key"),
    )


def _event_id(tag: bytes, op: bytes, index: int) -> int:
    if not 0 <= index < INDEX_MAX:
        raise InvalidRequest(f"event index must be in [0, {INDEX_MAX})", code="field_invalid")
    return _u128(derive(tag, _bytes(op, 32, "operation id"), index.to_bytes(4, "big")))


def transfer_id(op: bytes, index: int) -> int:
    """The ledger id of the ``index``-th transfer of operation ``op`` (an :func:`operation_id`,
    which already binds partner, mode, kind and key)."""
    return _event_id(TAG_TRANSFER, op, index)


def account_id(op: bytes, index: int) -> int:
    """The ledger id of the ``index``-th account an operation creates (not a wallet's)."""
    return _event_id(TAG_ACCOUNT, op, index)


def wallet_id(address: bytes, mode: Mode) -> bytes:
    """A user's wallet in one mode: the same 20-byte address gives two unrelated wallets."""
    return derive(TAG_WALLET, _bytes(address, 20, "wallet address"), _mode(mode))[:16]


def wallet_account_id(wallet: bytes, mode: Mode, ledger: int) -> int:
    """The wallet's one account on ``ledger`` (created on first use)."""
    return _u128(
        derive(TAG_WALLET_ACCOUNT, _bytes(wallet, 16, "wallet id"), _mode(mode), _u32(ledger))
    )


def partner_account_id(partner: bytes, mode: Mode, role: str, ledger: int) -> int:
    """A partner's system account for ``role`` (issuance, reserve, fees, ...) on ``ledger``."""
    return _u128(
        derive(
            TAG_PARTNER_ACCOUNT,
            _bytes(partner, 16, "partner id"),
            _mode(mode),
            _text(role, KIND_CHARS_MAX, "role"),
            _u32(ledger),
        )
    )


def user_ref(partner: bytes, mode: Mode, partner_user_id: str) -> bytes:
    """What the state holds for a partner's user: never the partner's own user id."""
    return derive(
        TAG_USER_REF,
        _bytes(partner, 16, "partner id"),
        _mode(mode),
        _text(partner_user_id, USER_ID_CHARS_MAX, "user id"),
    )


def code_hash(code: bytes) -> bytes:
    """The hash under which a one-time code is stored; the code itself is a bearer secret."""
    if not isinstance(code, bytes) or not CODE_BYTES_MIN <= len(code) <= CODE_BYTES_MAX:
        raise InvalidRequest(
            f"a one-time code is {CODE_BYTES_MIN}..{CODE_BYTES_MAX} bytes", code="field_invalid"
        )
    return derive(TAG_CODE, code)


def _u32(ledger: int) -> bytes:
    if type(ledger) is not int or not 0 < ledger <= U32_MAX:
        raise InvalidRequest("ledger must be a u32 other than 0", code="field_invalid")
    return ledger.to_bytes(4, "big")


def ledger_number(mode: Mode, asset_index: int) -> int:
    """The ledger of asset ``asset_index`` in ``mode``; its parity is the mode."""
    if type(asset_index) is not int or not 0 < asset_index <= ASSET_INDEX_MAX:
        raise InvalidRequest("asset index out of range", code="field_invalid")
    return asset_index * 2 + Mode(mode).value


def mode_of_ledger(ledger: int) -> Mode:
    return Mode(ledger & 1)
