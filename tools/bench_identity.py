"""``baas-bench-identity``: what a user's signature costs in every replica's apply (issue 11).

The identity core recovers the signer of every ``wallet.link``, ``wallet.unlink``,
``code.issue`` and debit approval inside apply, on every node, so its cost is paid N times
per operation. Measured, per signature, median of ``--rounds`` rounds of ``--n`` calls, each
as wall and CPU time:

* ``eth_account_us``: eth-account's generic path, ``encode_typed_data`` (the EIP-712 document
  parsed and validated each call) + ``Account.recover_message``;
* ``core_recover_us``: the core's path (:func:`business.identity.eip712.recover_signer`: the
  fixed types' Keccak hashing + eth-keys recovery), with the eth-keys backend in use;
* ``native_backend_us``: the same recovery on eth-keys' pure-Python backend (what a replica
  without ``coincurve`` would pay);
* ``link_apply_us`` / ``approval_check_us``: a whole ``wallet.link`` apply and a whole
  one-signature :func:`~business.identity.approvals.check_debits` over a MemoryView.

The load average is recorded with the numbers: the box may be shared.

    baas-bench-identity --out identity-bench.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.backends.native.main import NativeECCBackend
from eth_keys.datatypes import Signature

from business.identity import (
    Actor,
    ActorKind,
    AssetRef,
    Debit,
    IdentityConfig,
    IdentityMachine,
    LinkEntry,
    Mode,
    NoDebitRules,
    Operation,
    PartnerPut,
    PartnerStatus,
    Role,
    RoleAccount,
    SignedApproval,
    check_debits,
    eip712,
    encode_approvals,
    open_wallet_account,
)
from business.identity.ids import partner_account_id, partner_id, user_ref
from business.ledger import MemoryView
from node.consensus.state_machine import AppEntry, LogPosition

CHAIN_ID = 31337
NOW_MS = 1_800_000_000_000


def _per_call_us(fn: Callable[[], object], n: int, rounds: int) -> dict[str, float]:
    """Median µs per call over ``rounds``: wall time, and this process's CPU time (less
    inflated than wall time when the box is shared)."""
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            fn()
        wall.append((time.perf_counter() - start) / n * 1e6)
        cpu.append((time.process_time() - start_cpu) / n * 1e6)
    return {
        "wall": round(statistics.median(wall), 1),
        "cpu": round(statistics.median(cpu), 1),
    }


def run(n: int, rounds: int) -> dict[str, object]:
    user = Account.from_key(hashlib.sha256(b"bench-user").digest())
    wallet = bytes.fromhex(user.address[2:])
    shop = partner_id("bench-shop")
    ref = user_ref(shop, Mode.TEST, "user-1")
    message = eip712.Link(shop, Mode.TEST, ref, wallet, NOW_MS // 1000 + 600, b"\x01" * 32)
    document = eip712.typed_data(message, CHAIN_ID)
    signature = bytes(user.sign_message(encode_typed_data(full_message=document)).signature)
    assert eip712.recover_signer(message, CHAIN_ID, signature) == wallet

    def generic() -> object:
        signable = encode_typed_data(full_message=document)
        return Account.recover_message(signable, signature=signature)

    native = NativeECCBackend()  # (KeyAPI(backend).Signature would use the default one)
    digest = message.digest(CHAIN_ID)
    raw_sig = signature[:64] + bytes((signature[64] - 27,))

    def native_recover() -> object:
        sig = Signature(signature_bytes=raw_sig, backend=native)
        return sig.recover_public_key_from_msg_hash(digest).to_canonical_address()

    machine = IdentityMachine(IdentityConfig(chain_id=CHAIN_ID))
    view = MemoryView()
    operator = Actor(ActorKind.OPERATOR, bytes(16))
    roles = (RoleAccount(Mode.TEST, Role.RESERVE, AssetRef.BAAS),)
    put = machine.apply(
        AppEntry("partner.put", PartnerPut(shop, PartnerStatus.ACTIVE, roles, operator).to_body()),
        LogPosition(1, 1, NOW_MS),
        view,
    )
    view.apply(put.writes)
    link = LinkEntry(
        shop,
        Mode.TEST,
        ref,
        wallet,
        message.deadline,
        message.nonce,
        signature,
        Actor(ActorKind.PARTNER, bytes(16), shop),
    )
    link_entry = AppEntry("wallet.link", link.to_body())
    position = LogPosition(2, 1, NOW_MS)

    def link_apply() -> object:
        outcome = machine.apply(link_entry, position, view)  # never applied: a fresh link each
        assert outcome.code == "ok"
        return outcome

    account, writes = open_wallet_account(view, Mode.TEST, wallet, 2, NOW_MS)
    view.apply(writes)
    reserve = partner_account_id(shop, Mode.TEST, "reserve", 2)
    op = Operation(b"\x07" * 32, shop, Mode.TEST, (Debit(account, reserve, 10),))
    approve = eip712.Approve(Mode.TEST, op.digest, wallet, NOW_MS // 1000 + 60)
    approve_sig = bytes(
        user.sign_message(
            encode_typed_data(full_message=eip712.typed_data(approve, CHAIN_ID))
        ).signature
    )
    blob = encode_approvals([SignedApproval(wallet, approve.deadline, approve_sig)])
    config = machine.config

    def approval() -> object:
        result = check_debits(view, config, op, blob, NOW_MS, NoDebitRules())
        assert result[0] == "ok"
        return result

    return {
        "eth_keys_backend": type(eip712._BACKEND).__name__,
        "n": n,
        "rounds": rounds,
        "eth_account_us": _per_call_us(generic, n, rounds),
        "core_recover_us": _per_call_us(
            lambda: eip712.recover_signer(message, CHAIN_ID, signature), n, rounds
        ),
        "native_backend_us": _per_call_us(native_recover, max(1, n // 10), rounds),
        "link_apply_us": _per_call_us(link_apply, n, rounds),
        "approval_check_us": _per_call_us(approval, n, rounds),
        "loadavg": list(os.getloadavg()),
        "cpus": os.cpu_count(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-bench-identity", description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", help="write the JSON here too")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1:
        parser.error("--n and --rounds must be at least 1")
    result = json.dumps(run(args.n, args.rounds), indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(result + "\n")
    sys.stdout.write(result + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
