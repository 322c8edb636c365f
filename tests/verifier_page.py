"""Drives the self-contained receipt verifier (``verifier.html``) in a browser and compares it
with ``node/merkle/verify.py``: the form as a user fills it, the page's own ``verifyReceipt``
for many receipts at once, receipts changed in one place each, and the comparison itself.

Shared by ``test_dashboard_browser.py`` (the page served by a real cluster's gateway) and
``test_verifier_page.py`` (the file opened from disk against anvil, receipts of both versions).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page

from node.merkle.verify import Verdict
from tools.bench_dashboard import DONE

# A failure whose words come from a parser the page does not share: the page must say the
# same up to here, its own reason after.
FOREIGN_WORDS = ("not JSON:", "an operation outcome is not valid msgpack:")
# Steps whose details (not only the failures') must be verify_receipt's word for word.
WORD_FOR_WORD_STEPS = frozenset(
    {"leaf data", "record id", "outcome decodes", "outcome digest in leaf"}
)


def verify_in_form(page: Page, receipt: str) -> dict[str, tuple[str, str]]:
    """Paste ``receipt``, press Verify: step name -> (outcome, the step's text as shown)."""
    page.fill("#receipt", receipt)
    page.click("#verify-button")
    page.locator(DONE).wait_for()
    steps = page.locator("#steps > li")
    return {
        steps.nth(i).get_attribute("data-step") or "": (
            steps.nth(i).get_attribute("data-outcome") or "",
            steps.nth(i).inner_text(),
        )
        for i in range(steps.count())
    }


def verify_in_page(page: Page, texts: list[str], rpc: str) -> list[list[dict[str, Any]]]:
    """The page's ``verifyReceipt`` on each text in turn (no form): each one's steps."""
    steps: list[list[dict[str, Any]]] = page.evaluate(
        """async ([texts, rpc]) => {
            const all = [];
            for (const text of texts) {
                all.push((await verifyReceipt(text, {rpc, contract: "", confirmations: 1})).steps);
            }
            return all;
        }""",
        [texts, rpc],
    )
    return steps


def variants(receipt: str) -> dict[str, str]:
    """Receipts changed in one place each, to compare the page with verify_receipt."""
    base = json.loads(receipt)

    def changed(edit: Callable[[dict[str, Any]], object]) -> str:
        document = json.loads(receipt)
        edit(document)
        return json.dumps(document)

    flip = base["record_id"][:-1] + ("0" if base["record_id"][-1] != "0" else "1")
    return {
        "record id": changed(lambda d: d.update(record_id=flip)),
        "block number": changed(
            lambda d: d["anchor"].update(block_number=d["anchor"]["block_number"] + 1)
        ),
        "tree size": changed(lambda d: d["anchor"].update(tree_size=d["anchor"]["tree_size"] + 1)),
        "version": changed(lambda d: d.update(version=3 - d["version"])),  # 1 <-> 2
        "unknown field": changed(lambda d: d.update(extra=1)),
        "consistency": changed(
            lambda d: d.update(consistency_path=[*d["consistency_path"], "ab" * 32])
        ),
        "latest batch": changed(
            lambda d: d["latest_anchor"].update(batch_id=d["latest_anchor"]["batch_id"] + 5)
        ),
        "not json": receipt[:-3],
    }


def disagreement(expected: Verdict, got: list[dict[str, Any]]) -> str | None:
    """Where the page's steps differ from ``expected``'s (None when they agree): names and
    outcomes in order, the first failure's words, and the words of the steps that must
    match word for word (the executed operation's lines among them)."""
    names = [(s["name"], s["outcome"]) for s in got]
    if names != [(s.name, s.outcome.value) for s in expected.steps]:
        return f"steps {names} are not {[(s.name, s.outcome.value) for s in expected.steps]}"
    first = expected.first_failure
    for mine, theirs in zip(expected.steps, got, strict=True):
        if mine is first:
            words = next((w for w in FOREIGN_WORDS if mine.detail.startswith(w)), mine.detail)
            if words not in theirs["detail"]:
                return f"{mine.name}: {theirs['detail']!r} does not say {mine.detail!r}"
        elif mine.name in WORD_FOR_WORD_STEPS and mine.detail != theirs["detail"]:
            return f"{mine.name}: {theirs['detail']!r} is not {mine.detail!r}"
        if list(mine.lines) != theirs.get("lines", []):
            return f"{mine.name}: lines {theirs.get('lines')} are not {list(mine.lines)}"
    return None
