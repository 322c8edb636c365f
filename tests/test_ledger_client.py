"""The user's side of tools/ledger_client.py (``UserWallet``, what a wallet app does): its ids
and EIP-712 messages agree with the network's (business/identity), so what it signs is what
the state machine verifies. A drift in either (a tag, a field, the domain) fails here."""

from __future__ import annotations

import hashlib

from business.identity import eip712
from business.identity.ids import Mode, code_hash, partner_id, user_ref
from business.identity.model import IdentityConfig
from tools import ledger_client
from tools.ledger_client import UserWallet

KEY = hashlib.sha256(b"alice").digest()


def _address(user: UserWallet) -> bytes:
    return bytes.fromhex(user.address[2:])


def test_ids_match_the_networks() -> None:
    assert ledger_client.partner_ref("demo-shop") == partner_id("demo-shop")
    for livemode, mode in ((False, Mode.TEST), (True, Mode.LIVE)):
        assert ledger_client.user_ref("demo-shop", livemode, "u-1") == user_ref(
            partner_id("demo-shop"), mode, "u-1"
        )
    assert ledger_client.code_hash(b"c" * 32) == code_hash(b"c" * 32)
    assert IdentityConfig().chain_id == ledger_client.CHAIN_ID


def test_link_and_unlink_recover_to_the_wallet() -> None:
    user = UserWallet(KEY)
    for livemode in (False, True):
        mode = Mode(int(livemode))
        body = user.link("demo-shop", livemode=livemode, user_id="u-1", deadline=2_000_000_000)
        ref = user_ref(partner_id("demo-shop"), mode, "u-1")
        nonce = bytes.fromhex(body["nonce"][2:])
        signature = bytes.fromhex(body["signature"][2:])
        link = eip712.Link(partner_id("demo-shop"), mode, ref, _address(user), 2_000_000_000, nonce)
        assert eip712.recover_signer(link, ledger_client.CHAIN_ID, signature) == _address(user)
        # The same fields under Unlink are another message: a link signature is no unlink.
        unlink = eip712.Unlink(*[getattr(link, f) for f in link.__slots__])
        assert eip712.recover_signer(unlink, ledger_client.CHAIN_ID, signature) != _address(user)
        off = user.unlink("demo-shop", livemode=livemode, user_id="u-1", deadline=2_000_000_000)
        unlink = eip712.Unlink(
            partner_id("demo-shop"),
            mode,
            ref,
            _address(user),
            2_000_000_000,
            bytes.fromhex(off["nonce"][2:]),
        )
        signed = bytes.fromhex(off["signature"][2:])
        assert eip712.recover_signer(unlink, ledger_client.CHAIN_ID, signed) == _address(user)


def test_code_issue_recovers_and_carries_only_the_hash() -> None:
    user = UserWallet(KEY)
    code, body = user.issue_code(livemode=False, amount_limit="500", expiry=2_000_000_000)
    assert len(code) == ledger_client.CODE_BYTES and code.hex() not in str(body)
    message = eip712.CodeIssue(Mode.TEST, code_hash(code), 2, 500, 2_000_000_000, _address(user))
    signature = bytes.fromhex(body["signature"][2:])
    assert eip712.recover_signer(message, ledger_client.CHAIN_ID, signature) == _address(user)
    assert body["code_hash"] == "0x" + code_hash(code).hex()


def test_approve_signs_the_previews_typed_data_for_its_own_wallet_only() -> None:
    user, other = UserWallet(KEY), UserWallet(hashlib.sha256(b"bob").digest())
    digest = hashlib.sha256(b"an operation").digest()
    approve = eip712.Approve(int(Mode.TEST), digest, _address(user), 2_000_000_000)
    preview = {
        "approvals_required": [
            {"wallet": user.address, "typed_data": eip712.typed_data(approve, 31337)}
        ]
    }
    (approval,) = user.approve(preview)
    assert approval["deadline"] == 2_000_000_000 and approval["wallet"] == user.address
    signature = bytes.fromhex(approval["signature"][2:])
    assert eip712.recover_signer(approve, 31337, signature) == _address(user)
    assert other.approve(preview) == []
