"""baas-fuzz: a property-based fuzzer of the gateway's API, driven by its OpenAPI document.

Every operation of the document the gateway serves (``/v1/openapi.json``) gets requests made by
schemathesis (hypothesis strategies from the schemas): valid ones (``positive``) and ones each
schema refuses (``negative``). Every request of a signed operation is signed (:class:`Signer`,
the scheme of :mod:`gateway.auth`) with a credential of a principal the operation's
``security`` lists: ``partnerSignature`` a partner's, ``operatorSignature`` an operator's (made
in the setup, as ``baas-partners add-operator`` does); an operation listing both draws one per
request. So nearly all requests reach the route behind authentication. A few valid requests per
signed operation are signed by a principal it does NOT list (``wrong_principal``): a partner on
an operator route must get 404 (the route does not exist for it), an operator on a partner route
401 -- counted apart, each must be that problem.

Valid requests draw, now and then, their path, query and body values from objects made
beforehand (:data:`FIXTURES`: one row per operation that needs an existing object, or a fresh
name, for a 2xx), so each route is seen succeeding, not only refusing. The setup makes them
through the API itself: the operator onboards the fuzzing partner on the log (the ledger and
wallet routes serve only such partners; its test credential signs ``partnerSignature``), which
writes records, opens ledger accounts (keeping the derived ids the answers name), funds one from
the test faucet, makes pending transfers to post and void and links a user to a wallet with the
wallet's EIP-712 signature; a new link drawn while fuzzing is signed by a new key.

Where an operation declares an ``Idempotency-Key`` header, most valid requests carry a key
unique to the run, so a route whose 2xx needs a new key (a ledger write) reaches it from the
document alone. An operation without a row is still fuzzed from the document alone: a new
route is fuzzed the day it is documented.

Every answer is checked: no 5xx; status, content type, headers and body as the document says
(``response_schema_conformance`` and friends); a request the schema refuses is refused
(``negative_data_rejection``); every 4xx is an RFC 9457 problem with a stable ``code``
(:func:`problem_errors`). The run writes a JSON report: requests, by status, by operation, the
share past authentication, the 5xx and every failed check with a curl line to reproduce it.

``baas-fuzz --requests 10000 --out fuzz.json`` starts its own small cluster (3 nodes, the
embedded chain, the gateway; real processes) in a temporary directory; ``--cluster DIR`` fuzzes a
running cluster made by ``baas-cluster init`` instead (it adds an operator credential to that
cluster's keyring, so it needs the keyring's master key, and onboards a new partner each
run). Exit status 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import requests
import schemathesis
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import HealthCheck, Phase, settings
from requests.auth import AuthBase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from business.identity import IdentityConfig, eip712
from business.identity.ids import Mode, partner_id, user_ref
from gateway.auth import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign_request
from gateway.config import load_gateway_config
from gateway.keyring import (
    ApiCredential,
    Keyring,
    add_operator,
    change_keyring,
    load_keyring,
    load_master_key,
)
from gateway.openapi import OPENAPI_PATH, OPERATOR_SIGNATURE, PARTNER_SIGNATURE
from node.errors import OperationFailed
from tools.cluster_init import ClusterLayout, init_cluster, load_layout
from tools.ledger_client import UserWallet
from tools.local_cluster import LocalCluster

__all__ = [
    "FIXTURES",
    "Fixtures",
    "FuzzReport",
    "LedgerFixtures",
    "Signer",
    "fuzz_gateway",
    "link_body",
    "main",
    "make_credentials",
    "make_fixtures",
    "problem_errors",
    "run_on",
    "small_cluster",
]

PARTNER = "shop-a"
FUZZ_OPERATOR = "baas-fuzz"  # the operator id the fuzzer signs the admin routes as
SETUP_RECORDS = 12  # records made before fuzzing: targets for the read and receipt routes
FIXTURE_SHARE = 0.5  # of valid requests whose path/query come from a made object
REQUEST_TIMEOUT_S = 30.0
ANCHOR_WAIT_S = 120.0
PAST_AUTH_SHARE_MIN = 0.9
NEGATIVE_SHARE = 0.3  # of each operation's requests made to be refused by its schema
# Negative cases that leave out the API key, sent per operation; the rest are redrawn. Each
# meets the same authentication check (401), whatever else it breaks: past a few, they only
# take the negative share from the schema's checks (and the share past authentication down).
UNSIGNED_NEGATIVES_MAX = 3
WRONG_PRINCIPAL_SHARE = 0.05  # of a signed operation's requests signed by a principal it refuses
FRESH_KEY_SHARE = 0.8  # of valid requests given a new Idempotency-Key where one is declared
FRESH_NAME_SHARE = 0.5  # of fixture-drawn partner creations with a new name (the rest: 409)
# for the gateway to load the fuzzer's operator and the members to agree on the identity feature
ONBOARD_WAIT_S = 120.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
# The ledger's objects made in setup, as the fuzzing partner in test mode (through the API).
LEDGER_ACCOUNTS = 3  # accounts opened; the first is funded from the faucet and pays the rest
PAYMENT_UNIT = 10**16  # 0.01 BAAS: a QR carries at most 13 characters, so 10^-12 at the finest
LISTING: tuple[tuple[str, Any], ...] = (
    ("title", "Fuzz mug"), ("price", str(PAYMENT_UNIT)), ("stock", 1000),
)  # fmt: skip
FUND_AMOUNT = 10**30  # test BAAS (minor units) in the first account: fuzzing never drains it
PENDING_TRANSFERS = 8  # two-phase transfers made for each of post and void (each resolves once)
PENDING_AMOUNT = 10**6  # what each reserves
MOVE_AMOUNT_MAX = 1000  # what a fixture-drawn transfer, faucet or partial post moves
LINKED_ITEMS_MAX = 3  # transfers in a fixture-drawn linked chain or batch
CREDIT_USER_SHARE = 0.3  # of fixture-drawn transfers that credit the linked user's wallet
LINK_DEADLINE_S = 3600  # how far ahead a fixture-drawn wallet link's signature is valid
LEDGER_WAIT_S = 120.0  # for the members to enable the ledger and identity log features
WEBHOOK_DISABLE_SHARE = 0.2  # of fixture-drawn updates that disable (resends are then paused)
WEBHOOK_SPARES = 3  # endpoints made in setup for the delete route (each deletes once)
WEBHOOK_WAIT_S = 60.0  # for the setup's payment events to be delivered to its receiver
# the small cluster's gateway delivers webhooks, to the fuzzer's receiver on loopback only
WEBHOOKS_TOML = (
    '\n[webhooks]\ndeliver = true\ndata_dir = "gateway-webhooks"\n'
    'allow_hosts = ["127.0.0.1"]\npoll_interval_s = 0.2\n'
)
# What a request signed by a principal the operation does not list must get, by the signer's
# scheme: a partner on an operator route sees no such route; an operator anywhere else is told
# its credential signs the admin routes only (gateway/app.py, gateway/admin_routes.py).
WRONG_PRINCIPAL_STATUS = {PARTNER_SIGNATURE: 404, OPERATOR_SIGNATURE: 401}
PROBLEM_CONTENT_TYPE = "application/problem+json"
SERVER_ERRORS_KEPT_MAX = 50  # the report keeps this many examples of each kind
FAILURES_KEPT_MAX = 200
PROGRESS_EVERY = 1000  # requests between progress lines on stderr
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


class Signer(AuthBase):
    """Signs each prepared request with one credential (``gateway.auth``; a partner's and an
    operator's are signed alike): the body and path it carries once built, a fresh nonce each
    time, so no two fuzzed requests are replays.

    Only a request that carries the security scheme's header (``X-Baas-Key``, any value: the
    generator fills it in for signed operations) is signed; one generated without it (a negative
    case testing authentication) goes out unsigned and must be refused."""

    def __init__(self, api_key: str, secret: bytes) -> None:
        self.api_key = api_key
        self.secret = secret

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        if HEADER_KEY not in request.headers:
            return request
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER, "")
        if isinstance(idempotency_key, bytes):
            idempotency_key = idempotency_key.decode("latin-1")
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        request.headers[HEADER_KEY] = self.api_key
        request.headers[HEADER_TIMESTAMP] = timestamp
        request.headers[HEADER_NONCE] = nonce
        request.headers[HEADER_SIGNATURE] = sign_request(
            self.secret,
            str(request.method),
            str(request.path_url),
            timestamp,
            idempotency_key,
            bytes(body),
            nonce,
        )
        return request


@dataclass(frozen=True, slots=True)
class LedgerFixtures:
    """The fuzzing partner's ledger objects (test mode), all made through the API in setup."""

    accounts: tuple[str, ...]  # the first holds FUND_AMOUNT
    transfer_ids: tuple[str, ...]  # to read: the faucet's, a credit of the user, the pending
    pending_to_post: tuple[str, ...]  # pending transfers no one resolves but the post route
    pending_to_void: tuple[str, ...]  # and the void route
    linked_user: str  # the partner's user id linked, with the user's signature, to a wallet


@dataclass(frozen=True, slots=True)
class BridgeFixtures:
    """The fuzzing partner's Bridge objects (test mode). The defaults name objects that do not
    exist (a gateway without nodes); the cluster setup makes them through the API."""

    asset: str = "FUZZPTS"  # its point asset's code (scale 2, no validity period)
    issuance_ids: tuple[str, ...] = ("ab" * 32,)  # issuances to its linked user, to reverse
    swap_ids: tuple[str, ...] = ("swap_" + "ab" * 32,)
    quote: tuple[tuple[str, Any], ...] = ()  # a quote for the linked user (fields), to preview
    policy: tuple[tuple[str, Any], ...] = ()  # the policy it set (fields), set again: 2xx
    # the redemption and the swap setup made with the user's approval, as (key, body): sent
    # again under their key they are answered their first outcome (200)
    redemption: tuple[str, tuple[tuple[str, Any], ...]] = ("", ())
    swap: tuple[str, tuple[tuple[str, Any], ...]] = ("", ())
    token: str = "0x" + "fa" * 20  # a token it registered (log feature 12), with a policy


Made = tuple[str, tuple[tuple[str, Any], ...]]  # (idempotency key, body) of a setup write


@dataclass(frozen=True, slots=True)
class PaymentsFixtures:
    """The fuzzing partner's payments and Market objects (test mode). The defaults name
    objects that do not exist (a gateway without nodes); the cluster setup makes them through
    the Payment API. Each write that needs an existing object in a given state (a capture, a
    void, a refund, an order step) is setup's own, sent again under its key: its 2xx."""

    intent_id: str = "pi_" + "ab" * 32
    static_qr_id: str = "sqr_" + "ab" * 32
    qr_payloads: tuple[str, ...] = ("",)  # the intent's and the static QR's, to decode
    payment_id: str = "pay_" + "ab" * 32  # authorised, captured in part, refunded in part
    voided_id: str = "pay_" + "cd" * 32
    payment: Made = ("", ())  # the approved server-side authorisation
    capture: Made = ("", ())
    void: Made = ("", ())
    refund: Made = ("", ())
    listing_id: str = "lst_" + "ab" * 32
    listing: tuple[tuple[str, Any], ...] = ()
    order_id: str = "ord_" + "ab" * 32  # placed, fulfilled, refunded in part
    cancelled_id: str = "ord_" + "cd" * 32
    order: Made = ("", ())
    fulfil: Made = ("", ())
    cancel: Made = ("", ())
    order_refund: Made = ("", ())


@dataclass(frozen=True, slots=True)
class WebhookFixtures:
    """The fuzzing partner's webhook endpoints (test mode) and deliveries to its receiver.
    The defaults name objects that do not exist (a gateway without nodes, or one that does
    not deliver); the cluster setup makes them through the API."""

    url: str = "http://127.0.0.1:9/hooks"  # the fuzzer's receiver (answers 204)
    endpoint_id: str = "we_" + "ab" * 8  # to update, rotate and list deliveries of
    spare_ids: tuple[str, ...] = ("we_" + "cd" * 8,)  # to delete
    delivery_ids: tuple[str, ...] = ("whd_1",)  # delivered: each may be resent


@dataclass(frozen=True, slots=True)
class Fixtures:
    """Objects made before fuzzing, which valid requests may name."""

    record_ids: tuple[str, ...]  # the fuzzing partner's records
    anchored_record_ids: tuple[str, ...]  # of those, the ones a mined anchor covers
    anchor_batch_ids: tuple[int, ...]  # the anchors' batch ids, oldest first
    partner: str  # the fuzzing partner (its own audit trail is readable by it and operators)
    partner_mode: str  # its credential's mode ("test" or "live"): the audit trail it may read
    partner_ids: tuple[str, ...]  # partners that exist: the keyring's and the fuzzing one
    tag: str  # unique to the run: new partner names and idempotency keys never met before
    ledger: LedgerFixtures
    chain_id: int  # the EIP-712 domain the nodes verify users' signatures in
    bridge: BridgeFixtures = BridgeFixtures()
    payments: PaymentsFixtures = PaymentsFixtures()
    webhooks: WebhookFixtures = WebhookFixtures()


# case attribute ("path_parameters", "query", "body") -> values merged into what was generated
Overrides = dict[str, dict[str, Any]]


def _consistency(f: Fixtures, rng: random.Random) -> Overrides:
    old, new = sorted(rng.choices(f.anchor_batch_ids, k=2))
    return {"query": {"from": str(old), "to": str(new)}}


def _new_partner(f: Fixtures, rng: random.Random) -> Overrides:
    """A name no partner has (201), or one that exists (409 ``partner_exists``)."""
    if rng.random() < FRESH_NAME_SHARE:
        return {"body": {"id": f"fz-{f.tag}-{rng.getrandbits(48):012x}"}}
    return {"body": {"id": rng.choice(f.partner_ids)}}


def _path_id(rng: random.Random, ids: tuple[str, ...]) -> Overrides:
    return {"path_parameters": {"id": rng.choice(ids)}}


def _amount(rng: random.Random) -> str:
    return str(rng.randint(1, MOVE_AMOUNT_MAX))


def _move(f: Fixtures, rng: random.Random, user: bool = False) -> dict[str, Any]:
    """A transfer the ledger applies: from the funded account to another of the partner's, or
    to the wallet linked to its user (``user``). Only what the generator drew as metadata and
    code is kept: its accounts, approvals and timeouts would only be refused."""
    ledger = f.ledger
    credit = (
        {"credit_user": ledger.linked_user}
        if user
        else {"credit_account": rng.choice(ledger.accounts[1:])}
    )
    return {"debit_account": ledger.accounts[0], **credit, "amount": _amount(rng)}


# keys a fixture row takes out of what was generated (a transfer takes one credit, no approvals)
_DROP: Any = object()
_NOT_DRAWN = ("credit_account", "credit_user", "debit_user", "pending", "timeout_s", "approvals")


# a merchant QR's display fields (an intent's or a static QR's), the optional ones as drawn
_QR_SHOWN = {"name": "Fuzz Shop", "city": "Berlin", "asset": _DROP, "country": _DROP,
             "category": _DROP}  # fmt: skip


def _transfer(f: Fixtures, rng: random.Random) -> Overrides:
    drop = dict.fromkeys(_NOT_DRAWN, _DROP)
    return {"body": {**drop, **_move(f, rng, rng.random() < CREDIT_USER_SHARE)}}


def _list(rng: random.Random, name: str, ids: tuple[str, ...]) -> Overrides:
    """A page of 1..100, from the start or naming one of the partner's objects."""
    chosen = rng.choice(ids) if rng.random() < 0.5 else _DROP
    drop = dict.fromkeys(("starting_after", "account"), _DROP)
    return {"query": {**drop, "limit": str(rng.randint(1, 100)), name: chosen}}


def _preview(f: Fixtures, rng: random.Random) -> Overrides:
    """A transfer to preview: one of the partner's, or a debit of its linked user's wallet
    (what a user approves; the preview proposes nothing, so it stays 200 however often)."""
    if rng.random() < 0.5:
        return _transfer(f, rng)
    drop = dict.fromkeys((*_NOT_DRAWN, "debit_account"), _DROP)
    user = {"debit_user": f.ledger.linked_user, "credit_account": f.ledger.accounts[0]}
    return {"body": {**drop, **user, "amount": _amount(rng)}}


def _new_code(f: Fixtures, rng: random.Random) -> Overrides:
    """A one-time code a new wallet issues (its hash, the wallet's signature): 201."""
    wallet = UserWallet(_private_key(rng), f.chain_id)
    _, body = wallet.issue_code(
        livemode=f.partner_mode == "live",
        amount_limit=_amount(rng),
        expiry=int(time.time()) + LINK_DEADLINE_S,
        code=rng.randbytes(32),
    )
    return {"body": body}


def _unlink(f: Fixtures, rng: random.Random) -> Overrides:
    """The partner's unlink of a user id it never linked: 200 (nothing linked), so the linked
    user the other rows credit and read stays linked."""
    user_id = f"fz-{f.tag}-unlinked-{rng.getrandbits(48):012x}"
    drop = dict.fromkeys(("wallet", "deadline", "nonce", "signature"), _DROP)
    return {"path_parameters": {"user_id": user_id}, "body": drop}


def _asset(f: Fixtures) -> Overrides:
    return {"path_parameters": {"asset": f.bridge.asset}}


def _token(f: Fixtures) -> Overrides:
    return {"path_parameters": {"asset": f.bridge.token}}


def _new_token(f: Fixtures, rng: random.Random) -> Overrides:
    """A contract never registered (201 until the partner's tokens_per_partner_max)."""
    return {"body": {"symbol": "FZ", "decimals": 6, "address": "0x" + rng.randbytes(20).hex()}}


def _points(f: Fixtures, rng: random.Random) -> Overrides:
    """Points to or from the linked user: a few, which setup issued plenty of."""
    return {**_asset(f), "body": {"user": f.ledger.linked_user, "amount": str(rng.randint(1, 9))}}


def _replay(made: tuple[str, tuple[tuple[str, Any], ...]], rng: random.Random) -> Overrides:
    """Half the time, an approved operation of setup again, under its own key."""
    key, body = made
    if not key or rng.random() < 0.5:
        return {}
    return {"headers": {IDEMPOTENCY_HEADER: key}, "body": dict(body)}


def _replay_always(made: Made) -> Overrides:
    """Setup's approved write again under its own key (the user's approval binds the key)."""
    key, body = made
    return {"headers": {IDEMPOTENCY_HEADER: key}, "body": dict(body)} if key else {}


def _step(object_id: str, made: Made) -> Overrides:
    """A step on one of setup's objects: setup's own, sent again under its key."""
    return {"path_parameters": {"id": object_id}, **_replay_always(made)}


def _redeem(f: Fixtures, rng: random.Random) -> Overrides:
    replay = _replay(f.bridge.redemption, rng)
    return {**_asset(f), **replay} if replay else _points(f, rng)


def _swap_batch(f: Fixtures, rng: random.Random) -> Overrides:
    """Setup's approved swap again under its key (its 2xx: the first outcome), or under a new
    key, where its approval is another digest's and is refused in its slot; the batch is 200
    either way."""
    key, body = f.bridge.swap
    if not key:
        return {}
    if rng.random() < 0.5:
        key = f"fz-{f.tag}-batch-{rng.getrandbits(48):012x}"
    return {"body": {"swaps": [{"idempotency_key": key, **dict(body)}]}}


def _swap(f: Fixtures) -> Overrides:
    return {"body": {"user": f.ledger.linked_user, "quote": dict(f.bridge.quote) or _DROP}}


def _chain(f: Fixtures, rng: random.Random, keyed: bool) -> list[dict[str, Any]]:
    """1..LINKED_ITEMS_MAX transfers, each with its own new key for the batch route."""
    items = []
    for _ in range(rng.randint(1, LINKED_ITEMS_MAX)):
        item = {**_move(f, rng), "code": rng.randint(1, 65535)}
        if keyed:
            item["idempotency_key"] = f"fz-{f.tag}-item-{rng.getrandbits(64):016x}"
        items.append(item)
    return items


def _post(f: Fixtures, rng: random.Random) -> Overrides:
    """A pending transfer of setup, posted whole or in part (once; after that 409)."""
    amount = str(rng.randint(1, PENDING_AMOUNT)) if rng.random() < 0.5 else _DROP
    return {**_path_id(rng, f.ledger.pending_to_post), "body": {"amount": amount}}


def link_body(
    partner: str,
    mode: Mode,
    chain_id: int,
    user_id: str,
    private_key: bytes,
    nonce: bytes,
    deadline: int,
) -> dict[str, Any]:
    """``POST /v1/wallets/links``'s body: the user (the key's owner) signs the EIP-712 ``Link``
    of ``partner``'s ``user_id`` to its wallet in ``mode``, as a wallet app would."""
    user = Account.from_key(private_key)
    wallet = bytes.fromhex(user.address[2:])
    pid = partner_id(partner)
    message = eip712.Link(pid, mode, user_ref(pid, mode, user_id), wallet, deadline, nonce)
    signable = encode_typed_data(full_message=eip712.typed_data(message, chain_id))
    return {
        "user_id": user_id,
        "wallet": user.address.lower(),
        "deadline": deadline,
        "nonce": "0x" + nonce.hex(),
        "signature": "0x" + bytes(user.sign_message(signable).signature).hex(),
    }


def _new_link(f: Fixtures, rng: random.Random) -> Overrides:
    """A new user of the partner, linked to a new wallet with that wallet's signature."""
    user_id = f"fz-{f.tag}-user-{rng.getrandbits(48):012x}"
    deadline = int(time.time()) + LINK_DEADLINE_S
    mode = Mode[f.partner_mode.upper()]
    key, nonce = _private_key(rng), rng.randbytes(32)
    return {"body": link_body(f.partner, mode, f.chain_id, user_id, key, nonce, deadline)}


def _private_key(rng: random.Random) -> bytes:
    # below the secp256k1 group order: any such non-zero number is a key
    return rng.randrange(1, 2**255).to_bytes(32, "big")


# One row per operation whose success needs an existing object: what to put in a valid request.
# New routes (the ledger's) add a row here; everything else comes from the document.
FIXTURES: dict[str, Callable[[Fixtures, random.Random], Overrides]] = {
    "getRecord": lambda f, rng: {"path_parameters": {"record_id": rng.choice(f.record_ids)}},
    "getRecordReceipt": lambda f, rng: {
        "path_parameters": {"record_id": rng.choice(f.anchored_record_ids)}
    },
    "getAnchors": lambda f, rng: {"query": {"from": str(rng.choice(f.anchor_batch_ids))}},
    "getConsistency": _consistency,
    "createPartner": _new_partner,
    "getPartner": lambda f, rng: {"path_parameters": {"partner": rng.choice(f.partner_ids)}},
    "listPartners": lambda f, rng: {"query": {"starting_after": rng.choice(f.partner_ids)}},
    # the fuzzing partner's own trail in its credential's mode: readable by it and by operators
    "listAuditEntries": lambda f, rng: {"query": {"partner": f.partner, "mode": f.partner_mode}},
    # the ledger's: objects the partner made in setup, amounts the funded account can pay
    "getLedgerAccount": lambda f, rng: _path_id(rng, f.ledger.accounts),
    "listLedgerAccounts": lambda f, rng: _list(rng, "starting_after", f.ledger.accounts),
    "listLedgerTransfers": lambda f, rng: _list(rng, "account", f.ledger.accounts),
    "getLedgerTransfer": lambda f, rng: _path_id(rng, f.ledger.transfer_ids),
    "testFaucet": lambda f, rng: {
        "body": {"account": rng.choice(f.ledger.accounts), "amount": _amount(rng)}
    },
    "createLedgerTransfer": _transfer,
    "previewLedgerTransfer": _preview,
    "createLedgerLinkedTransfers": lambda f, rng: {
        "body": {"transfers": _chain(f, rng, keyed=False), "approvals": _DROP}
    },
    "createLedgerTransfers": lambda f, rng: {"body": {"transfers": _chain(f, rng, keyed=True)}},
    "previewLedgerLinkedTransfers": lambda f, rng: {
        "body": {"transfers": _chain(f, rng, keyed=False)}
    },
    "postLedgerTransfer": _post,
    "voidLedgerTransfer": lambda f, rng: _path_id(rng, f.ledger.pending_to_void),
    "createWalletLink": _new_link,
    "getWalletLink": lambda f, rng: {"path_parameters": {"user_id": f.ledger.linked_user}},
    "listWalletBalances": lambda f, rng: {"path_parameters": {"user_id": f.ledger.linked_user}},
    "unlinkWallet": _unlink,
    "createOneTimeCode": _new_code,
    # the Bridge's: the partner's point asset, its linked user, what setup made. A redemption
    # and a swap need the user's signature over a digest that derives from the request's own
    # Idempotency-Key: a drawn key is refused (403); setup's own, sent again, is its 2xx.
    "createBridgePoints": lambda f, rng: {
        "body": {"code": f.bridge.asset, "scale": 2, "validity_days": _DROP}
    },
    "getBridgePoints": lambda f, rng: _asset(f),
    "issueBridgePoints": lambda f, rng: _points(f, rng),
    "previewBridgeRedeem": lambda f, rng: _points(f, rng),
    "redeemBridgePoints": _redeem,
    "reverseBridgePoints": lambda f, rng: {
        **_asset(f),
        "body": {"issuance": rng.choice(f.bridge.issuance_ids), "amount": "1"},
    },
    "fundBridgeLiquidity": lambda f, rng: {**_asset(f), "body": {"amount": _amount(rng)}},
    "getBridgeUserPoints": lambda f, rng: {
        "path_parameters": {"asset": f.bridge.asset, "user_id": f.ledger.linked_user}
    },
    "setBridgePolicy": lambda f, rng: {**_asset(f), "body": dict(f.bridge.policy)},
    "getBridgePolicy": lambda f, rng: {**_asset(f), "query": {"version": _DROP}},
    "createBridgeToken": _new_token,
    "getBridgeToken": lambda f, rng: _token(f),
    "fundBridgeTokenLiquidity": lambda f, rng: {**_token(f), "body": {"amount": _amount(rng)}},
    "setBridgeTokenPolicy": lambda f, rng: {**_token(f), "body": dict(f.bridge.policy)},
    "getBridgeTokenPolicy": lambda f, rng: {**_token(f), "query": {"version": _DROP}},
    "topUpBridgeReserve": lambda f, rng: {"body": {"amount": _amount(rng)}},
    "setBridgeReserveThreshold": lambda f, rng: {"body": {"threshold": "0"}},
    "getBridgeReserve": lambda f, rng: {"query": {"after": _DROP}},
    "createBridgeQuote": lambda f, rng: {
        "body": {
            "asset": f.bridge.asset,
            "user": f.ledger.linked_user,
            "direction": "in",
            "amount_in": str(rng.randint(10, 100)),
        }
    },
    "previewBridgeSwap": lambda f, rng: _swap(f),
    "createBridgeSwap": lambda f, rng: _replay(f.bridge.swap, rng) or _swap(f),
    "getBridgeSwap": lambda f, rng: _path_id(rng, f.bridge.swap_ids),
    "createBridgeSwaps": _swap_batch,
    # payments and the Market: setup's objects; state-changing steps are setup's own again
    "createPaymentIntent": lambda f, rng: {
        "body": {
            "amount": str(rng.randint(1, 9) * PAYMENT_UNIT),
            "reference": f"fz-{rng.getrandbits(40):010x}",
            "expires_at": int(time.time()) + 3600,
            **_QR_SHOWN,
        }
    },
    "getPaymentIntent": lambda f, rng: {"path_parameters": {"id": f.payments.intent_id}},
    "getPaymentIntentSvg": lambda f, rng: {"path_parameters": {"id": f.payments.intent_id}},
    "getPaymentIntentPng": lambda f, rng: {"path_parameters": {"id": f.payments.intent_id}},
    "createStaticQr": lambda f, rng: {"body": dict(_QR_SHOWN)},
    "getStaticQr": lambda f, rng: {"path_parameters": {"id": f.payments.static_qr_id}},
    "getStaticQrSvg": lambda f, rng: {"path_parameters": {"id": f.payments.static_qr_id}},
    "getStaticQrPng": lambda f, rng: {"path_parameters": {"id": f.payments.static_qr_id}},
    "decodeQr": lambda f, rng: {"body": {"payload": rng.choice(f.payments.qr_payloads)}},
    "previewPayment": lambda f, rng: {
        "body": {
            "user": f.ledger.linked_user,
            "amount": str(PAYMENT_UNIT),
            "qr": _DROP,
            "approvals": _DROP,
        }
    },
    "createPayment": lambda f, rng: _replay_always(f.payments.payment),
    "getPayment": lambda f, rng: {"path_parameters": {"id": f.payments.payment_id}},
    "listPayments": lambda f, rng: {"query": {"starting_after": _DROP, "limit": _DROP}},
    "capturePayment": lambda f, rng: _step(f.payments.payment_id, f.payments.capture),
    "voidPayment": lambda f, rng: _step(f.payments.voided_id, f.payments.void),
    "refundPayment": lambda f, rng: _step(f.payments.payment_id, f.payments.refund),
    "createMarketListing": lambda f, rng: {"body": dict(f.payments.listing or LISTING)},
    "searchMarketListings": lambda f, rng: {"query": {"page": _DROP}},
    "getMarketListing": lambda f, rng: {"path_parameters": {"id": f.payments.listing_id}},
    "updateMarketListing": lambda f, rng: {
        "path_parameters": {"id": f.payments.listing_id},
        "body": dict(f.payments.listing or LISTING),
    },
    # a preview's body is the write's without its approvals: a generated one (and a float
    # capture window) would turn the row's request into a 400 (a CI run drew no 2xx)
    "previewMarketOrder": lambda f, rng: {
        "body": {
            "listing": f.payments.listing_id,
            "quantity": 1,
            "user": f.ledger.linked_user,
            "approvals": _DROP,
            "capture_window_s": _DROP,
        }
    },
    "createMarketOrder": lambda f, rng: _replay_always(f.payments.order),
    "getMarketOrder": lambda f, rng: {"path_parameters": {"id": f.payments.order_id}},
    "fulfilMarketOrder": lambda f, rng: _step(f.payments.order_id, f.payments.fulfil),
    "cancelMarketOrder": lambda f, rng: _step(f.payments.cancelled_id, f.payments.cancel),
    "refundMarketOrder": lambda f, rng: _step(f.payments.order_id, f.payments.order_refund),
    # webhooks: endpoints to the fuzzer's receiver (new ones get one rare event type, so they
    # add little traffic); a rotation with no overlap always succeeds; deliveries setup saw
    "createWebhookEndpoint": lambda f, rng: {
        "body": {"url": f.webhooks.url, "enabled_events": ["reserve.low"]}
    },
    "updateWebhookEndpoint": lambda f, rng: {
        **_path_id(rng, (f.webhooks.endpoint_id,)),
        "body": {"disabled": rng.random() < WEBHOOK_DISABLE_SHARE},
    },
    "deleteWebhookEndpoint": lambda f, rng: _path_id(rng, f.webhooks.spare_ids),
    "rotateWebhookEndpointSecret": lambda f, rng: {
        **_path_id(rng, (f.webhooks.endpoint_id,)),
        "body": {"overlap_s": 0},
    },
    "listWebhookDeliveries": lambda f, rng: {
        **_path_id(rng, (f.webhooks.endpoint_id,)),
        "query": {"starting_after": _DROP},
    },
    "resendWebhookDelivery": lambda f, rng: _path_id(rng, f.webhooks.delivery_ids),
}


def problem_errors(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    code_seen: Callable[[str], None] | None = None,
) -> list[str]:
    """What is wrong with an error answer (empty if it is a problem with a stable code)."""
    if status < 400:
        return []
    content_type = headers.get("Content-Type", headers.get("content-type", ""))
    found = []
    if content_type.split(";")[0].strip() != PROBLEM_CONTENT_TYPE:
        found.append(f"{status} answered as {content_type!r}, not {PROBLEM_CONTENT_TYPE}")
    try:
        document = json.loads(body)
    except ValueError:
        return [*found, f"{status} body is not JSON: {body[:80]!r}"]
    code = document.get("code") if isinstance(document, dict) else None
    if code_seen is not None:
        code_seen(str(code))
    if not isinstance(code, str) or not code or not code.replace("_", "").isalnum():
        found.append(f"{status} problem has no stable code: {body[:120]!r}")
    elif document.get("status") != status:
        found.append(f"{status} problem says status {document.get('status')!r}")
    return found


@dataclass(slots=True)
class FuzzReport:
    """What one run sent and saw; :meth:`as_json` is the report file."""

    seed: int
    requests: int = 0
    unauthenticated: int = 0  # 401 answers: requests that did not get past authentication
    by_status: Counter[int] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)  # problem codes of the 4xx and 5xx
    by_operation: dict[str, Counter[int]] = field(default_factory=dict)
    # requests signed by a principal the operation does not list: apart from the counts above
    # (their refusals are expected, not authentication failures of the fuzzer)
    wrong_principal: dict[str, Counter[int]] = field(default_factory=dict)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    failure_count: int = 0
    generation_errors: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0

    def record(self, operation: str, status: int, wrong_principal: bool = False) -> None:
        if wrong_principal:
            self.wrong_principal.setdefault(operation, Counter())[status] += 1
            return
        self.requests += 1
        self.by_status[status] += 1
        self.by_operation.setdefault(operation, Counter())[status] += 1
        if status == 401:
            self.unauthenticated += 1

    def fail(self, entry: dict[str, Any]) -> None:
        self.failure_count += 1
        if len(self.failures) < FAILURES_KEPT_MAX:
            self.failures.append(entry)

    @property
    def past_auth_share(self) -> float:
        return 1.0 - self.unauthenticated / self.requests if self.requests else 0.0

    @property
    def server_error_count(self) -> int:
        counters = (self.by_status, *self.wrong_principal.values())
        return sum(c for counter in counters for status, c in counter.items() if status >= 500)

    def operations_without_2xx(self) -> list[str]:
        return sorted(
            op
            for op, statuses in self.by_operation.items()
            if not any(200 <= s < 300 for s in statuses)
        )

    def ok(self) -> bool:
        return (
            self.server_error_count == 0
            and self.failure_count == 0
            and not self.generation_errors
            and self.past_auth_share >= PAST_AUTH_SHARE_MIN
            and not self.operations_without_2xx()
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok(),
            "seed": self.seed,
            "requests": self.requests,
            "duration_s": round(self.duration_s, 1),
            "requests_per_s": round(self.requests / self.duration_s, 1) if self.duration_s else 0,
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "past_auth_share": round(self.past_auth_share, 4),
            "by_status": {str(s): c for s, c in sorted(self.by_status.items())},
            "by_code": dict(sorted(self.by_code.items())),
            "by_operation": {
                op: {str(s): c for s, c in sorted(statuses.items())}
                for op, statuses in sorted(self.by_operation.items())
            },
            "operations_without_2xx": self.operations_without_2xx(),
            "wrong_principal": {
                op: {str(s): c for s, c in sorted(statuses.items())}
                for op, statuses in sorted(self.wrong_principal.items())
            },
            "server_errors": self.server_errors,
            "server_error_count": self.server_error_count,
            "failures": self.failures,
            "failure_count": self.failure_count,
            "generation_errors": self.generation_errors,
        }


def _apply(case: schemathesis.Case[Any], overrides: Overrides) -> None:
    for attribute, values in overrides.items():
        merged = {**(getattr(case, attribute) or {}), **values}
        setattr(case, attribute, {k: v for k, v in merged.items() if v is not _DROP})


def _curl(case: schemathesis.Case[Any], response: schemathesis.Response) -> str:
    with contextlib.suppress(Exception):  # reproduction help only
        return case.as_curl_command(headers=dict(response.request.headers))
    return f"{case.method} {case.formatted_path}"


def _check(
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
    report: FuzzReport,
    mode: str,
    status_expected: int | None = None,
) -> None:
    """Check one answer; ``status_expected`` is the one status a wrong principal must get."""
    operation = str(case.operation.label)
    headers = {name: values[0] for name, values in response.headers.items() if values}
    status = response.status_code
    report.record(operation, status, wrong_principal=status_expected is not None)
    if status_expected is None and report.requests % PROGRESS_EVERY == 0:
        print(
            f"{report.requests} requests, {report.server_error_count} 5xx, "
            f"{report.failure_count} failed checks ({operation})",
            file=sys.stderr,
            flush=True,
        )
    found = problem_errors(
        status, headers, response.content, lambda code: report.by_code.update((code,))
    )
    if status_expected is not None and status != status_expected:
        found.append(f"signed by a principal it does not list: {status}, not {status_expected}")
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as exc:
        found += [f"{f.title}: {f.message}"[:400] for f in exc.exceptions]
    if status >= 500 and len(report.server_errors) < SERVER_ERRORS_KEPT_MAX:
        report.server_errors.append(
            {
                "operation": operation,
                "status": status,
                "body": response.content[:300].decode("utf-8", "replace"),
                "curl": _curl(case, response),
            }
        )
    if found:
        report.fail(
            {
                "operation": operation,
                "mode": mode,
                "status": status,
                "problems": found,
                "body": response.content[:300].decode("utf-8", "replace"),
                "curl": _curl(case, response),
            }
        )


@dataclass(frozen=True, slots=True)
class _Run:
    """What every request of one run shares."""

    session: requests.Session
    base_url: str
    fixtures: Fixtures
    report: FuzzReport
    keys: Iterator[int]  # numbers the run's fresh idempotency keys


@dataclass(frozen=True, slots=True)
class _Pass:
    """One batch of requests to one operation."""

    mode: schemathesis.GenerationMode
    examples: int
    signers: tuple[Signer, ...]  # one drawn per request; none: the operation is public
    status_expected: int | None = None  # set: signed by a principal the operation refuses

    @property
    def label(self) -> str:
        return "wrong_principal" if self.status_expected is not None else self.mode.value


def _declares_idempotency_key(operation: Any) -> bool:
    return any(p.name.lower() == IDEMPOTENCY_HEADER.lower() for p in operation.headers)


def _has_key(case: schemathesis.Case[Any]) -> bool:
    return any(name.lower() == HEADER_KEY.lower() for name in case.headers or {})


def _fuzz_operation(operation: Any, run_: _Run, pass_: _Pass, seed: int) -> None:
    rng = random.Random(seed)
    fixture = FIXTURES.get(str(operation.definition.raw.get("operationId", "")))
    fresh_keys = pass_.mode.is_positive and _declares_idempotency_key(operation)
    unsigned = itertools.count()

    @hypothesis.seed(seed)
    @settings(
        max_examples=pass_.examples,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=pass_.mode))
    def run(case: schemathesis.Case[Any]) -> None:
        overrides: Overrides = {}
        if fixture is not None and pass_.mode.is_positive and rng.random() < FIXTURE_SHARE:
            overrides = fixture(run_.fixtures, rng)
            _apply(case, overrides)
        # a row that names its own key (an approved operation of setup, sent again) keeps it
        keyed = IDEMPOTENCY_HEADER in overrides.get("headers", {})
        if fresh_keys and not keyed and rng.random() < FRESH_KEY_SHARE:
            key = f"fz-{run_.fixtures.tag}-{next(run_.keys)}"  # setup's are fuzz-...
            case.headers[IDEMPOTENCY_HEADER] = key
        signer = rng.choice(pass_.signers) if pass_.signers else None
        unsigned_negative = signer is not None and not pass_.mode.is_positive and not _has_key(case)
        if unsigned_negative and next(unsigned) >= UNSIGNED_NEGATIVES_MAX:
            hypothesis.reject()
        if signer is not None and pass_.mode.is_positive:
            # a valid request is a signed one: the scheme's header is optional where the
            # operation lists two schemes, and an unsigned valid request would only test 401
            case.headers[HEADER_KEY] = "signed"
        response = case.call(
            base_url=run_.base_url, session=run_.session, timeout=REQUEST_TIMEOUT_S, auth=signer
        )
        _check(case, response, run_.report, pass_.label, pass_.status_expected)

    try:
        run()
    except (hypothesis.errors.Unsatisfiable, schemathesis.errors.SchemathesisError) as exc:
        # A schema with nothing to negate (an operation without inputs) has no negative cases.
        if pass_.mode.is_positive:
            run_.report.generation_errors[f"{operation.label} {pass_.label}"] = str(exc)[:300]


def _operation_or_raise(result: Ok[Any] | Err[Any]) -> Any:
    if isinstance(result, Err):
        raise OperationFailed(f"the gateway's OpenAPI document has a bad operation: {result.err()}")
    return result.ok()


def _inputs(operation: Any) -> tuple[bool, int]:
    """How much an operation takes in: the ones with less go first (see fuzz_gateway)."""
    definition = operation.definition.raw
    return "requestBody" in definition, len(definition.get("parameters", []))


def _schemes(operation: Any, document: Mapping[str, Any]) -> list[str]:
    """The security schemes an operation lists (any one of them signs it)."""
    requirements = operation.definition.raw.get("security", document.get("security", []))
    return sorted({scheme for requirement in requirements for scheme in requirement})


def _passes(
    operation: Any, document: Mapping[str, Any], signers: Mapping[str, Signer], share: int
) -> list[_Pass]:
    """Valid, schema-refused and wrong-principal requests to ``operation``, about ``share``."""
    schemes = _schemes(operation, document)
    unknown = [s for s in schemes if s not in signers]
    if unknown:
        raise OperationFailed(f"{operation.label}: no credential for security scheme {unknown}")
    own = tuple(signers[s] for s in schemes)
    wrong = [s for s in sorted(signers) if schemes and s not in schemes]
    wrong_count = max(1, int(share * WRONG_PRINCIPAL_SHARE)) if wrong else 0
    negative = max(1, int(share * NEGATIVE_SHARE))
    positive = max(1, share - negative - wrong_count * len(wrong))
    return [
        _Pass(schemathesis.GenerationMode.POSITIVE, positive, own),
        _Pass(schemathesis.GenerationMode.NEGATIVE, negative, own),
        *(
            _Pass(
                schemathesis.GenerationMode.POSITIVE,
                wrong_count,
                (signers[s],),
                WRONG_PRINCIPAL_STATUS[s],
            )
            for s in wrong
        ),
    ]


def fuzz_gateway(
    gateway_url: str,
    credentials: Mapping[str, ApiCredential],
    fixtures: Fixtures,
    requests_total: int,
    seed: int,
) -> FuzzReport:
    """Fuzz every operation of the gateway's document with about ``requests_total`` requests,
    signing with ``credentials`` by security scheme (``partnerSignature``,
    ``operatorSignature``).

    The document is read as served (from a dict: schemathesis leaves out the path it loaded a
    schema from, and the document's own route is a route too). Operations that take little in
    run out of distinct requests early (``/healthz`` has one header); they go first, and what
    they leave of their share goes to the ones after them."""
    document = requests.get(f"{gateway_url}{OPENAPI_PATH}", timeout=REQUEST_TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(document)
    operations = sorted(map(_operation_or_raise, schema.get_all_operations()), key=_inputs)
    signers = {
        scheme: Signer(credential.api_key, credential.secret)
        for scheme, credential in credentials.items()
    }
    report = FuzzReport(seed=seed)
    session = requests.Session()
    run_ = _Run(session, gateway_url, fixtures, report, itertools.count())
    started = time.monotonic()
    try:
        for index, operation in enumerate(operations):
            sent = report.requests + sum(map(Counter.total, report.wrong_principal.values()))
            share = max(3, (requests_total - sent) // (len(operations) - index))
            for number, pass_ in enumerate(_passes(operation, document, signers, share)):
                _fuzz_operation(operation, run_, pass_, seed * 1000 + index * 10 + number)
    finally:
        session.close()
    report.duration_s = time.monotonic() - started
    return report


# --- making the objects the fuzzer names ----------------------------------------------------


def _signed(session: requests.Session, base_url: str, method: str, path: str, **kw: Any) -> Any:
    response = session.request(method, f"{base_url}{path}", timeout=REQUEST_TIMEOUT_S, **kw)
    return response.status_code, response.json()


def _signing_session(credential: ApiCredential) -> requests.Session:
    session = requests.Session()
    session.auth = Signer(credential.api_key, credential.secret)
    session.headers[HEADER_KEY] = credential.api_key
    return session


def make_credentials(layout: ClusterLayout, partner: str) -> dict[str, ApiCredential]:
    """The credentials to sign with, by security scheme: ``partner``'s (from the keyring, which
    holds its mode) and the fuzzer's operator's (:data:`FUZZ_OPERATOR`). The operator is added
    to ``layout``'s keyring the first time, as ``baas-partners add-operator`` does (under the
    keyring's lock; running gateways load it within keyring_reload_interval_s); later runs sign
    with the credential the keyring holds, so reruns do not pile up operators."""
    config = load_gateway_config(Path(layout.gateway_config_path))
    master_key = load_master_key(config.master_key_file)
    now_ms = time.time_ns() // 1_000_000

    def with_operator(keyring: Keyring) -> Keyring:
        return add_operator(keyring, FUZZ_OPERATOR)[0]

    keyring = load_keyring(config.keyring_file, master_key)
    if FUZZ_OPERATOR not in keyring.operators:
        keyring = change_keyring(config.keyring_file, master_key, with_operator)
    operator = next(c for c in keyring.operators[FUZZ_OPERATOR].credentials if c.live(now_ms))
    own = keyring.principal(layout.partners[partner]["api_key"], now_ms).credential
    return {PARTNER_SIGNATURE: own, OPERATOR_SIGNATURE: operator}


def _write_records(session: requests.Session, gateway_url: str, tag: str) -> tuple[str, ...]:
    items = [
        {"idempotency_key": f"fuzz-{tag}-{i}", "record": {"n": i, "amount_minor": 100 * i}}
        for i in range(SETUP_RECORDS)
    ]
    status, body = _signed(
        session, gateway_url, "POST", "/v1/records/batch", json={"records": items}
    )
    if status != 200 or any(r["status"] not in (200, 201) for r in body["results"]):
        raise OperationFailed(f"could not write the fuzzer's records: {status} {body}")
    return tuple(r["record_id"] for r in body["results"])


def _anchored(
    session: requests.Session, gateway_url: str, ids: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Wait until an anchor covering ``ids`` is mined: the anchored ones and the anchors."""
    deadline = time.monotonic() + ANCHOR_WAIT_S
    while time.monotonic() < deadline:
        status, _ = _signed(session, gateway_url, "GET", f"/v1/records/{ids[-1]}/receipt")
        if status == 200:
            break
        time.sleep(0.5)
    else:
        raise OperationFailed(f"no anchor covered the fuzzer's records in {ANCHOR_WAIT_S} s")
    anchored = tuple(
        rid
        for rid in ids
        if _signed(session, gateway_url, "GET", f"/v1/records/{rid}/receipt")[0] == 200
    )
    status, chain = _signed(session, gateway_url, "GET", "/v1/log/anchors?from=1")
    if status != 200:
        raise OperationFailed(f"could not list the anchors: {status} {chain}")
    return anchored, tuple(int(a["batch_id"]) for a in chain["anchors"])


def _onboard(session: requests.Session, gateway_url: str, tag: str) -> dict[str, Any]:
    """Onboard a new partner as the operator, once the gateway knows the operator's credential
    and the members apply identity entries (a new cluster agrees on that feature after a
    while): the answer, with the partner's secrets (shown this once)."""
    deadline = time.monotonic() + ONBOARD_WAIT_S
    for attempt in itertools.count():
        name = f"fz-{tag}-setup{attempt or ''}"
        status, body = _signed(
            session, gateway_url, "POST", "/v1/admin/partners", json={"id": name}
        )
        if status == 201:
            return dict(body)
        # 409: an earlier try went through after all, and its secrets are gone: a new name
        if status not in (401, 409, 503) or time.monotonic() > deadline:
            raise OperationFailed(f"could not onboard the fuzzer's partner: {status} {body}")
        time.sleep(0.5)
    raise AssertionError("unreachable")


def _test_credential(onboarded: Mapping[str, Any]) -> ApiCredential:
    found = next(c for c in onboarded["credentials"] if not c["livemode"])
    return ApiCredential(found["id"], bytes.fromhex(found["secret"]), mode=Mode.TEST)


def _ledger_call(
    session: requests.Session, gateway_url: str, path: str, body: Any, key: str | None
) -> Any:
    """One ledger write of the setup, repeated with its key while the answer says nothing was
    decided (503: the members have not enabled the ledger yet)."""
    headers = {} if key is None else {IDEMPOTENCY_HEADER: key}
    deadline = time.monotonic() + LEDGER_WAIT_S
    while True:
        status, answer = _signed(session, gateway_url, "POST", path, json=body, headers=headers)
        if status in (200, 201):
            return answer
        if status not in (429, 503) or time.monotonic() > deadline:
            raise OperationFailed(f"fuzzer setup: POST {path} answered {status} {answer}")
        time.sleep(0.5)


def _make_ledger_objects(
    session: requests.Session, gateway_url: str, partner: str, tag: str, chain_id: int
) -> LedgerFixtures:
    """As the fuzzing partner ``partner`` (test mode), through the API: accounts (ids as
    answered: they are derived), the first funded from the faucet, pending transfers for post
    and void, and one of its users linked to a wallet with the wallet's EIP-712 signature (and
    credited once)."""
    accounts = tuple(
        _ledger_call(
            session,
            gateway_url,
            "/v1/ledger/accounts",
            {"asset": "baas", "code": 1 + i},
            f"fuzz-{tag}-account-{i}",
        )["id"]
        for i in range(LEDGER_ACCOUNTS)
    )
    fund = {"account": accounts[0], "amount": str(FUND_AMOUNT)}
    funded = _ledger_call(session, gateway_url, "/v1/test/faucet", fund, f"fuzz-{tag}-fund")
    pending = [
        {
            "idempotency_key": f"fuzz-{tag}-pending-{i}",
            "debit_account": accounts[0],
            "credit_account": accounts[1],
            "amount": str(PENDING_AMOUNT),
            "code": 1,
            "pending": True,
        }
        for i in range(2 * PENDING_TRANSFERS)
    ]
    batch = _ledger_call(
        session, gateway_url, "/v1/ledger/transfers/batch", {"transfers": pending}, None
    )
    if any(r["status"] not in (200, 201) for r in batch["results"]):
        raise OperationFailed(f"fuzzer setup: pending transfers refused: {batch}")
    held = tuple(r["transfer"]["id"] for r in batch["results"])
    user_id = f"fz-{tag}-user"
    rng = random.Random(tag)
    deadline = int(time.time()) + LINK_DEADLINE_S
    link = link_body(
        partner, Mode.TEST, chain_id, user_id, _private_key(rng), rng.randbytes(32), deadline
    )
    _ledger_call(session, gateway_url, "/v1/wallets/links", link, f"fuzz-{tag}-link")
    # credited once here, so a setup that cannot credit a linked user fails loudly
    reward = {"debit_account": accounts[0], "credit_user": user_id, "amount": "1", "code": 1}
    paid = _ledger_call(session, gateway_url, "/v1/ledger/transfers", reward, f"fuzz-{tag}-pay")
    return LedgerFixtures(
        accounts=accounts,
        transfer_ids=(funded["id"], paid["id"], *held),
        pending_to_post=held[:PENDING_TRANSFERS],
        pending_to_void=held[PENDING_TRANSFERS:],
        linked_user=user_id,
    )


BRIDGE_POLICY: dict[str, Any] = {
    "rate_num": str(10**16), "rate_den": "1", "swap_min": "10", "swap_max": "1000",
    "window_s": 3600, "user_window_max": "0", "partner_window_max": "0", "fee_bps": 100,
    "fee_min": "0", "enabled": True,
}  # fmt: skip


def _make_bridge_objects(
    session: requests.Session, gateway_url: str, ledger: LedgerFixtures, tag: str, chain_id: int
) -> BridgeFixtures:
    """As the fuzzing partner, through the Bridge API: its point asset, a policy, a funded
    reserve and liquidity, issuances to its linked user, a quote and one swap the user
    approved (their key is the one the link was signed with), a token with a policy."""
    asset = BridgeFixtures().asset
    _ledger_call(session, gateway_url, "/v1/bridge/points", {"code": asset, "scale": 2},
                 f"fuzz-{tag}-points")  # fmt: skip
    points = f"/v1/bridge/points/{asset}"
    _ledger_call(session, gateway_url, points + "/policy", BRIDGE_POLICY, f"fuzz-{tag}-policy")
    top_up = {"amount": str(10**24)}
    _ledger_call(session, gateway_url, "/v1/bridge/reserve/top_up", top_up, f"fuzz-{tag}-top")
    liquidity = {"amount": "100000"}
    _ledger_call(session, gateway_url, points + "/liquidity", liquidity, f"fuzz-{tag}-liq")
    issue = {"user": ledger.linked_user, "amount": "100000"}
    issuances = tuple(
        _ledger_call(session, gateway_url, points + "/issue", issue, f"fuzz-{tag}-issue-{i}")["id"]
        for i in range(2)
    )
    ask = {"asset": asset, "user": ledger.linked_user, "direction": "in", "amount_in": "100"}
    quote = _ledger_call(session, gateway_url, "/v1/bridge/quotes", ask, None)
    user = UserWallet(_private_key(random.Random(tag)), chain_id)  # as _make_ledger_objects
    swap = {"user": ledger.linked_user, "quote": quote}
    key = f"fuzz-{tag}-swap"
    preview = _ledger_call(session, gateway_url, "/v1/bridge/swaps/preview", swap, key)
    swap["approvals"] = user.approve(preview)
    swapped = _ledger_call(session, gateway_url, "/v1/bridge/swaps", swap, key)
    token = BridgeFixtures().token
    registered = {"symbol": "FUZZTOK", "decimals": 6, "address": token}
    _ledger_call(session, gateway_url, "/v1/bridge/tokens", registered, f"fuzz-{tag}-token")
    tokens = f"/v1/bridge/tokens/{token}"
    _ledger_call(session, gateway_url, tokens + "/policy", BRIDGE_POLICY, f"fuzz-{tag}-tpolicy")
    redeem: dict[str, Any] = {"user": ledger.linked_user, "amount": "5"}
    redeem_key = f"fuzz-{tag}-redeem"
    shown = _ledger_call(session, gateway_url, points + "/redeem/preview", redeem, redeem_key)
    redeem["approvals"] = user.approve(shown)
    _ledger_call(session, gateway_url, points + "/redeem", redeem, redeem_key)
    return BridgeFixtures(
        asset=asset,
        issuance_ids=issuances,
        swap_ids=(swapped["id"],),
        quote=tuple(quote.items()),
        policy=tuple(BRIDGE_POLICY.items()),
        redemption=(redeem_key, tuple(redeem.items())),
        swap=(key, tuple(swap.items())),
        token=token,
    )


def _made(key: str, body: dict[str, Any]) -> Made:
    return key, tuple(body.items())


def _make_payments_objects(
    session: requests.Session, gateway_url: str, ledger: LedgerFixtures, tag: str, chain_id: int
) -> PaymentsFixtures:
    """As the fuzzing partner, through the Payment API: a QR intent and a static QR; a payment
    its linked user approved, captured in part and refunded in part; another voided; a listing
    of its own; an order the user approved, fulfilled and refunded in part; another
    cancelled."""
    user = UserWallet(_private_key(random.Random(tag)), chain_id)  # as _make_ledger_objects
    credit = {"debit_account": ledger.accounts[0], "credit_user": ledger.linked_user,
              "amount": str(10**6 * PAYMENT_UNIT), "code": 1}  # fmt: skip
    _ledger_call(session, gateway_url, "/v1/ledger/transfers", credit, f"fuzz-{tag}-pay-fund")
    intent = _ledger_call(session, gateway_url, "/v1/payment_intents", {
        "amount": str(100 * PAYMENT_UNIT), "reference": f"fuzz-{tag}",
        "expires_at": int(time.time()) + 3600, "name": "Fuzz Shop", "city": "Berlin",
    }, f"fuzz-{tag}-intent")  # fmt: skip
    static_body = {"name": "Fuzz Shop", "city": "Berlin"}
    static_qr = _ledger_call(session, gateway_url, "/v1/qr/static", static_body,
                             f"fuzz-{tag}-static-qr")  # fmt: skip

    def approved(path: str, body: dict[str, Any], key: str) -> tuple[Any, Made]:
        shown = _ledger_call(session, gateway_url, path + "/preview", body, key)
        signed = {**body, "approvals": user.approve(shown)}
        return _ledger_call(session, gateway_url, path, signed, key), _made(key, signed)

    def step(path: str, body: dict[str, Any], key: str) -> Made:
        _ledger_call(session, gateway_url, path, body, key)
        return _made(key, body)

    authorise = {"user": ledger.linked_user, "amount": str(100 * PAYMENT_UNIT)}
    paid, payment = approved("/v1/payments", authorise, f"fuzz-{tag}-pay")
    pid = str(paid["id"])
    capture = step(f"/v1/payments/{pid}/capture", {"amount": str(60 * PAYMENT_UNIT)},
                   f"fuzz-{tag}-capture")  # fmt: skip
    refund = step(f"/v1/payments/{pid}/refunds", {"amount": str(PAYMENT_UNIT)},
                  f"fuzz-{tag}-refund")  # fmt: skip
    voided, _ = approved("/v1/payments", authorise, f"fuzz-{tag}-pay-void")
    vid = str(voided["id"])
    void = step(f"/v1/payments/{vid}/void", {}, f"fuzz-{tag}-void")
    listing_body = dict(LISTING)
    listing = _ledger_call(session, gateway_url, "/v1/market/listings", listing_body,
                           f"fuzz-{tag}-listing")  # fmt: skip
    lid = str(listing["id"])
    buy = {"listing": lid, "quantity": 1, "user": ledger.linked_user}
    placed, order = approved("/v1/market/orders", buy, f"fuzz-{tag}-order")
    oid = str(placed["id"])
    fulfil = step(f"/v1/market/orders/{oid}/fulfil", {}, f"fuzz-{tag}-fulfil")
    order_refund = step(f"/v1/market/orders/{oid}/refunds", {"amount": "1"},
                        f"fuzz-{tag}-order-refund")  # fmt: skip
    other, _ = approved("/v1/market/orders", buy, f"fuzz-{tag}-order-cancel")
    cid = str(other["id"])
    cancel = step(f"/v1/market/orders/{cid}/cancel", {}, f"fuzz-{tag}-cancel")
    return PaymentsFixtures(
        intent_id=str(intent["id"]),
        static_qr_id=str(static_qr["id"]),
        qr_payloads=(str(intent["payload"]), str(static_qr["payload"])),
        payment_id=pid,
        voided_id=vid,
        payment=payment,
        capture=capture,
        void=void,
        refund=refund,
        listing_id=lid,
        listing=tuple(listing_body.items()),
        order_id=oid,
        cancelled_id=cid,
        order=order,
        fulfil=fulfil,
        cancel=cancel,
        order_refund=order_refund,
    )


class _Receiver(http.server.BaseHTTPRequestHandler):
    """The partner's webhook receiver: every POST answered 204 (its body read and dropped)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: thousands of deliveries


@contextlib.contextmanager
def webhook_receiver() -> Iterator[str]:
    """A receiver on 127.0.0.1 (a thread) for the run: its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()
        server.server_close()


def _make_webhook_endpoints(
    session: requests.Session, gateway_url: str, url: str
) -> WebhookFixtures | None:
    """Before the payments setup (whose events it should get): an endpoint for every event
    and spares to delete. None where the gateway refuses the receiver's URL."""
    made = []
    for events in (["*"], *[["reserve.low"]] * WEBHOOK_SPARES):
        status, answer = _signed(session, gateway_url, "POST", "/v1/webhook_endpoints",
                                 json={"url": url, "enabled_events": events})  # fmt: skip
        if status != 201:
            print(f"baas-fuzz: no webhook fixtures ({status} {answer})", file=sys.stderr)
            return None
        made.append(str(answer["id"]))
    return WebhookFixtures(url=url, endpoint_id=made[0], spare_ids=tuple(made[1:]))


def _delivered(
    session: requests.Session, gateway_url: str, webhooks: WebhookFixtures
) -> WebhookFixtures:
    """After the payments setup: its deliveries once delivered (a resend needs a finished
    one); the defaults where this gateway does not deliver."""
    path = f"/v1/webhook_endpoints/{webhooks.endpoint_id}/deliveries?limit=100"
    deadline = time.monotonic() + WEBHOOK_WAIT_S
    while time.monotonic() < deadline:
        status, answer = _signed(session, gateway_url, "GET", path)
        if status != 200:
            print(f"baas-fuzz: no webhook deliveries ({status} {answer})", file=sys.stderr)
            return webhooks
        done = tuple(d["id"] for d in answer["data"] if d["status"] == "delivered")
        if done:
            return WebhookFixtures(webhooks.url, webhooks.endpoint_id, webhooks.spare_ids, done)
        time.sleep(0.5)
    return webhooks


def make_fixtures(
    gateway_url: str,
    credentials: Mapping[str, ApiCredential],
    partners: Iterable[str],
    webhook_url: str | None = None,
) -> tuple[Fixtures, dict[str, ApiCredential]]:
    """As the operator (``operatorSignature``), onboard a partner on the log: the fuzzing
    partner, whose test credential signs ``partnerSignature`` from then on (the ledger and
    wallet routes serve only partners on the log). As it, write a few records and wait until
    an anchor covering them is mined, then make its ledger objects and a wallet link, its
    webhook endpoints to ``webhook_url`` (a receiver the gateway may deliver to), its Bridge
    and payments objects. ``partners`` names the partners that exist already. Answers the
    fixtures and the credentials to fuzz with."""
    tag = secrets.token_hex(4)
    chain_id = IdentityConfig().chain_id  # the nodes' (node/main.py): the default
    with _signing_session(credentials[OPERATOR_SIGNATURE]) as session:
        onboarded = _onboard(session, gateway_url, tag)
    name, own = str(onboarded["id"]), _test_credential(onboarded)
    with _signing_session(own) as session:
        ids = _write_records(session, gateway_url, tag)
        anchored, batches = _anchored(session, gateway_url, ids)
        ledger = _make_ledger_objects(session, gateway_url, name, tag, chain_id)
        bridge = _make_bridge_objects(session, gateway_url, ledger, tag, chain_id)
        hooks = None
        if webhook_url is not None:
            hooks = _make_webhook_endpoints(session, gateway_url, webhook_url)
        payments = _make_payments_objects(session, gateway_url, ledger, tag, chain_id)
        webhooks = WebhookFixtures() if hooks is None else _delivered(session, gateway_url, hooks)
    fixtures = Fixtures(
        record_ids=ids,
        anchored_record_ids=anchored,
        anchor_batch_ids=batches,
        partner=name,
        partner_mode=own.mode.name.lower(),
        partner_ids=(*sorted(partners), name),
        tag=tag,
        ledger=ledger,
        chain_id=chain_id,
        bridge=bridge,
        payments=payments,
        webhooks=webhooks,
    )
    return fixtures, {**credentials, PARTNER_SIGNATURE: own}


@contextlib.contextmanager
def small_cluster(directory: Path) -> Iterator[ClusterLayout]:
    """A 3-node cluster (k=2, n=3) with the embedded chain and the gateway, in real processes;
    the gateway delivers webhooks (to the fuzzer's receiver on 127.0.0.1)."""
    layout = init_cluster(
        directory, nodes=3, k=2, n=3, partners=(PARTNER, "shop-b"), chain="embedded"
    )
    config = Path(layout.gateway_config_path)
    config.write_text(config.read_text() + WEBHOOKS_TOML)
    cluster = LocalCluster(layout)
    cluster.start()
    try:
        yield layout
    finally:
        cluster.stop()


def run_on(layout: ClusterLayout, requests_total: int, seed: int) -> FuzzReport:
    """Make the fixtures (a partner onboarded on the log, its records and ledger objects),
    then fuzz ``layout``'s gateway as that partner and the fuzzer's operator. The cluster
    needs a chain: the receipt route's 2xx needs an anchored record."""
    first = PARTNER if PARTNER in layout.partners else sorted(layout.partners)[0]
    credentials = make_credentials(layout, first)  # adds the fuzzer's operator once
    with webhook_receiver() as url:
        fixtures, signing = make_fixtures(layout.gateway_url, credentials, layout.partners, url)
        return fuzz_gateway(layout.gateway_url, signing, fixtures, requests_total, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="baas-fuzz", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="about this many requests")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (default: random)")
    parser.add_argument("--out", type=Path, default=Path("fuzz-report.json"))
    parser.add_argument(
        "--cluster",
        type=Path,
        default=None,
        help="a running cluster with a chain (default: start one)",
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    if args.cluster is not None:
        report = run_on(load_layout(args.cluster), args.requests, seed)
    else:
        with (
            tempfile.TemporaryDirectory(prefix="baas-fuzz-") as tmp,
            small_cluster(Path(tmp) / "cluster") as layout,
        ):
            report = run_on(layout, args.requests, seed)
    document = report.as_json()
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(
        f"{report.requests} requests in {report.duration_s:.0f} s, "
        f"{report.server_error_count} 5xx, {report.failure_count} failed checks, "
        f"{report.past_auth_share:.1%} past authentication, "
        f"no 2xx: {report.operations_without_2xx() or 'none'}; seed {seed}; report {args.out}"
    )
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
