"""Deposit credits as ``ledger.ops`` operations (log feature 10), for the deposit-step tests
and the v10 log-replay fixture.

Plain helpers (``from depositkit import credit_op``): :func:`deposit_body` is one confirmed
deposit (``n`` picks its transaction hash), :func:`credit_op` the platform's operation carrying
it, its record id derived from the deposit's key as the node's watcher derives it.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from test_index_batch import prop

from business.identity.ids import Mode, wallet_id
from business.identity.scope import PLATFORM
from node.chain.deposits import DepositKey, deposit_record_id
from node.consensus.deposit_ops import DepositCreditBody
from node.consensus.ledger_ops import Operation

CHAIN = 31337
VAULT = b"\x5a" * 20
TOKEN = b"\x70" * 20
UNIT = 10**18


def tx(n: int) -> bytes:
    return hashlib.sha256(b"tx%d" % n).digest()


def deposit_body(
    n: int,
    wallet_address: bytes,
    amount: int,
    *,
    ledger: int,
    hint: bool = True,
    block: int = 100,
    log_index: int = 0,
) -> DepositCreditBody:
    """Deposit ``n`` to the wallet of ``wallet_address`` (in the ledger's mode); ``hint``:
    the node found the address for the wallet id (a linked wallet)."""
    mode = Mode(ledger & 1)
    return DepositCreditBody(
        chain_id=CHAIN,
        vault=VAULT,
        tx_hash=tx(n),
        log_index=log_index,
        block_number=block,
        block_hash=hashlib.sha256(b"block%d" % block).digest(),
        token=TOKEN,
        ledger=ledger,
        wallet=wallet_id(wallet_address, mode),
        amount=amount,
        address=wallet_address if hint else None,
        cursor_number=block,
        cursor_hash=hashlib.sha256(b"block%d" % block).digest(),
    )


def record_id_of(body: DepositCreditBody) -> bytes:
    return deposit_record_id(DepositKey(body.chain_id, body.tx_hash, body.log_index))


def credit_op(
    body: DepositCreditBody,
    *,
    partner: bytes = PLATFORM,
    record_id: bytes | None = None,
    mode: int | None = None,
) -> Operation:
    """The platform's operation crediting ``body`` (its record: a proposal like prop(n)'s,
    under the deposit's record id, owned by the platform)."""
    proposal = replace(
        prop(body.log_index + 7000),
        record_id=record_id or record_id_of(body),
        owner="platform",
    )
    return Operation(
        proposal, None, None, partner, Mode(body.ledger & 1) if mode is None else mode,
        (), deposit=body.encode(),
    )  # fmt: skip
