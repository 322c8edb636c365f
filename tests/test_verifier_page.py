"""The self-contained receipt verifier (``verifier.html``) on receipts of both versions, opened
from disk in Debian's chromium (Playwright) against a real anvil with the AnchorRegistry.

A 12-leaf log mixes plain records (leaf data v1) and ledger operations (leaf data v2, as
``test_verify_v2.py`` builds them), anchored in two batches. Then, for a v1 and a v2 receipt:

* the page and ``verify_receipt`` agree, step by step (names, outcomes, the first failure's
  words, the leaf and outcome steps' words and the executed operation's lines), on the receipt
  and on the receipts of ``verifier_page.variants`` (the table the cluster test uses too), and
  on every single-byte flip of the leaf data;
* for the v2 receipt, also on every single-byte flip of the outcome (the summary kept, and
  rewritten to the flipped outcome's where that decodes), and on a lying summary;
* the v2 receipt verifies end to end through the form, shows the operation event by event
  like ``baas-verify``, in one chain round trip and within the bench's 100 ms of the page's
  own work, with no serious accessibility violation.

Needs anvil (``BAAS_ANVIL`` or ``contracts/node_modules``) and axe-core (``tests/browser``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from chains import running_anvil
from playwright.sync_api import Page, sync_playwright
from test_leaf_v2 import V2_RECEIPT_STEPS
from test_merkle import DictStore
from test_verify import anchor, deploy, flip
from test_verify_v2 import is_operation, leaf_data, outcome
from verifier_page import disagreement, variants, verify_in_form, verify_in_page
from web3 import Web3

from business.ledger.model import AccountResult, AssetResult, TransferResult
from business.ledger.outcome import OperationOutcome
from node.anchoring.registry import RegistryReader
from node.errors import UnsupportedFormat
from node.merkle.leaf import LeafData
from node.merkle.receipt import Receipt, make_receipt
from node.merkle.tree import MerkleTree
from node.merkle.verify import verify_receipt
from tools.bench_dashboard import VERIFY_LOCAL_MS_MAX, launch_chromium, run_verify

ROOT = Path(__file__).resolve().parent.parent
VERIFIER = ROOT / "gateway" / "dashboard" / "static" / "verifier.html"
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
LEAVES = 12
ANCHOR_SIZES = (5, 12)
RECEIPTS = {1: 3, 2: 4}  # version -> leaf: both in batch 1, latest batch 2 (a real link)


@dataclass
class Env:
    rpc: str
    reader: RegistryReader
    receipts: dict[int, Receipt]
    page: Page

    def check(self, texts: dict[str, str]) -> None:
        """The page agrees with verify_receipt on every text (named by what changed)."""
        got = verify_in_page(self.page, list(texts.values()), self.rpc)
        problems = {
            what: problem
            for (what, text), steps in zip(texts.items(), got, strict=True)
            if (problem := disagreement(verify_receipt(text, self.reader), steps)) is not None
        }
        assert not problems, f"{len(problems)} of {len(texts)} disagree: {problems}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with running_anvil() as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        contract = deploy(w3)
        store = DictStore()
        tree = MerkleTree(store, 0)
        leaves = [leaf_data(i) for i in range(LEAVES)]
        anchors = []
        for batch, size in enumerate(ANCHOR_SIZES, start=1):
            hashes = (LeafData.decode(raw).leaf_hash() for raw in leaves[tree.size : size])
            tree.extend(hashes, store)
            anchors.append(anchor(w3, contract, batch, size, tree.root()))
        receipts = {
            version: make_receipt(
                tree,
                i,
                leaves[i],
                anchors[0],
                anchors[-1],
                outcome(i).encode() if is_operation(i) else None,
            )
            for version, i in RECEIPTS.items()
        }
        assert {v: r.version for v, r in receipts.items()} == {1: 1, 2: 2}
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page()
                page.goto(f"{VERIFIER.as_uri()}?{urllib.parse.urlencode({'rpc': node.url})}")
                yield Env(node.url, RegistryReader(w3, contract.address), receipts, page)
            finally:
                browser.close()


def test_the_page_knows_every_ledger_result_code() -> None:
    listed = re.search(
        r"const RESULT_CODES = new Set\(\((.*?)\)\.split", VERIFIER.read_text(), re.S
    )
    assert listed is not None
    codes = "".join(re.findall(r'"([^"]*)"', listed.group(1))).split(" ")
    ledger = {c.value for results in (AssetResult, AccountResult, TransferResult) for c in results}
    assert sorted(codes) == sorted(ledger)


@pytest.mark.parametrize("version", [1, 2])
def test_the_page_and_verify_receipt_agree_on_a_receipt_and_its_variants(
    env: Env, version: int
) -> None:
    text = env.receipts[version].to_json()
    assert verify_receipt(text, env.reader).ok
    env.check({"as issued": text, **variants(text)})


@pytest.mark.parametrize("version", [1, 2])
def test_the_page_and_verify_receipt_agree_on_every_flip_of_the_leaf_data(
    env: Env, version: int
) -> None:
    receipt = env.receipts[version]
    raw = receipt.leaf_data
    env.check(
        {
            f"leaf byte {at}": replace(receipt, leaf_data=flip(raw, at)).to_json()
            for at in range(len(raw))
        }
    )


def test_the_page_and_verify_receipt_agree_on_every_flip_of_the_outcome(env: Env) -> None:
    receipt = env.receipts[2]
    assert receipt.outcome is not None
    texts: dict[str, str] = {}
    for at in range(len(receipt.outcome)):
        flipped = flip(receipt.outcome, at)
        texts[f"outcome byte {at}"] = replace(receipt, outcome=flipped).to_json()
        try:
            forged = OperationOutcome.decode(flipped)
        except UnsupportedFormat:
            continue
        # A forger who rewrites the summary too: caught by the leaf's digest.
        texts[f"outcome byte {at}, summary too"] = replace(
            receipt, outcome=flipped, outcome_summary=forged.summary()
        ).to_json()
    assert any(what.endswith("summary too") for what in texts)
    env.check(texts)


def test_the_page_and_verify_receipt_agree_on_lying_or_odd_summaries(env: Env) -> None:
    text = env.receipts[2].to_json()

    def changed(edit: str, value: object) -> str:
        document = json.loads(text)
        target = document["outcome_summary"]
        *path, last = edit.split(".")
        for key in path:
            target = target[int(key)] if key.isdigit() else target[key]
        target[last] = value
        return json.dumps(document)

    env.check(
        {
            "result": changed("events.2.result", "exceeds_credits"),
            "amount": changed("events.2.amount", "1"),
            "amount as a number": changed("events.1.amount", 0),
            "ledger as a string": changed("events.1.ledger", "1"),
            "ledger as true": changed("events.1.ledger", True),  # Python: True == 1
            "ledger as 1.0": text.replace('"ledger": 1,', '"ledger": 1.0,', 1),
            "extra key": changed("events.0.memo", "x"),
            "log time": changed("log_time_ms", 1),
            "no events": changed("events", []),
            "not an object": changed("events", None).replace(
                '"outcome_summary": {', '"outcome_summary": [{', 1
            ),
            "outcome not hex": text.replace('"outcome": "', '"outcome": "0x', 1),
            "outcome empty": re.sub(r'"outcome": "[0-9a-f]*"', '"outcome": ""', text),
        }
    )


def test_the_page_and_verify_receipt_agree_on_odd_encodings_of_the_outcome(env: Env) -> None:
    receipt = env.receipts[2]
    raw = receipt.outcome
    assert raw is not None and raw[:2] == b"\x93\x01" and raw[11:14] == b"\x93\x98\x01"
    ledger_at = 14 + 18  # the first event's ledger, after its kind and 16-byte id

    def edited(new: bytes) -> str:
        return replace(receipt, outcome=new).to_json()

    env.check(
        {
            # The same outcome with a ledger of 1 as a uint8: not the canonical form.
            "uint8 ledger": edited(raw[:ledger_at] + b"\xcc\x01" + raw[ledger_at + 1 :]),
            "trailing byte": edited(raw + b"\x00"),
            "truncated": edited(raw[:-1]),
            "a map": edited(b"\x81\x01\x01"),
            "an empty map": edited(b"\x80"),
            "a float version": edited(b"\x93\xcb\x3f\xf0" + bytes(6) + raw[2:]),
            # Python's == lets a bool pass as the kind 1 (an asset), packed back as itself:
            # the outcome decodes, and its digest is not the leaf's.
            "kind as true": edited(raw[:13] + b"\xc3" + raw[14:]),
            "long result": edited(raw[:-10] + b"\xd9\x41" + b"x" * 65),
            "negative log time": edited(raw[:2] + b"\xd3" + raw[3:]),
            "bin of 17": edited(raw[:14] + b"\xc4\x11" + raw[16:] + b"\x00"),
            "never used byte": edited(b"\xc1"),
            # msgpack-python's stack holds 1024 arrays or maps, empty ones too.
            "1024 arrays deep": edited(b"\x91" * 1023 + b"\x90"),
            "1025 arrays deep": edited(b"\x91" * 1024 + b"\x90"),
            "1025 deep, a map": edited(b"\x91" * 1024 + b"\x80"),
            "an event of 9": edited(raw[:12] + b"\x99" + raw[13:] + b"\x00"),
        }
    )


def test_summary_integers_beyond_2_53_are_compared_exactly(env: Env) -> None:
    """A log time of 2**56 and more (an outcome's byte 3 flipped) and summaries that say it
    exactly, or one more (the same double): verify.py reads JSON integers exactly, so must
    the page."""
    receipt = env.receipts[2]
    assert receipt.outcome is not None
    flipped = flip(receipt.outcome, 3)
    forged = OperationOutcome.decode(flipped)
    assert forged.log_time_ms > 2**56
    exact = replace(receipt, outcome=flipped, outcome_summary=forged.summary())
    summary = forged.summary() | {"log_time_ms": forged.log_time_ms + 1}
    assert float(summary["log_time_ms"]) == float(forged.log_time_ms)
    off_by_one = replace(receipt, outcome=flipped, outcome_summary=summary)
    env.check({"exact": exact.to_json(), "off by one": off_by_one.to_json()})
    verdicts = [verify_receipt(r.to_json(), env.reader) for r in (exact, off_by_one)]
    assert [v.step("outcome decodes").ok for v in verdicts] == [True, False]


def test_a_v2_receipt_verifies_in_the_page_and_shows_the_operation(env: Env) -> None:
    receipt = env.receipts[2]
    expected = verify_receipt(receipt.to_json(), env.reader)
    assert expected.ok and [s.name for s in expected.steps] == list(V2_RECEIPT_STEPS)
    page = env.page
    steps = verify_in_form(page, receipt.to_json())
    assert page.locator("#verdict").get_attribute("data-outcome") == "ok", steps
    assert [(name, outcome) for name, (outcome, _) in steps.items()] == [
        (s.name, s.outcome.value) for s in expected.steps
    ]
    shown = page.locator('#steps > li[data-step="outcome decodes"] .events li').all_inner_texts()
    lines = expected.step("outcome decodes").lines
    assert shown == list(lines) and len(lines) == 3
    assert "transfer 104: debit account 7 -> credit account 504, ledger 1, amount " in lines[2]
    digest = outcome(RECEIPTS[2]).digest().hex()
    assert digest in steps["outcome digest in leaf"][1]
    timing = run_verify(page, receipt.to_json(), runs=5)
    print(f"a v2 receipt in the page: {timing}; load average {os.getloadavg()}")
    assert timing["chain_round_trips"] == 1
    assert timing["local_ms"]["max"] <= VERIFY_LOCAL_MS_MAX  # the page's own work
    page.evaluate(AXE.read_text() + "\n;0")
    result = page.evaluate("() => axe.run(document)")
    bad = [v["id"] for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert not bad
    # A lying summary fails in the form too, and its operation is not shown.
    lying = json.loads(receipt.to_json())
    lying["outcome_summary"]["events"][2]["result"] = "exceeds_credits"
    steps = verify_in_form(page, json.dumps(lying))
    assert 'failed at step "outcome decodes"' in page.locator("#verdict").inner_text()
    assert page.locator("#steps .events li").count() == 0


def test_the_page_and_verify_receipt_agree_when_the_leaf_is_of_the_other_version(
    env: Env,
) -> None:
    v1, v2 = env.receipts[1], env.receipts[2]
    swapped = {
        "v1 leaf in a v2 receipt": replace(v2, leaf_data=v1.leaf_data),
        "v2 leaf in a v1 receipt": replace(v1, leaf_data=v2.leaf_data),
    }
    env.check({what: r.to_json() for what, r in swapped.items()})
    for r in swapped.values():
        failure = verify_receipt(r.to_json(), env.reader).first_failure
        assert failure is not None and failure.name == "leaf data"
