"""``baas-verify``: check a receipt, a consistency proof or a chain of anchors against the chain.

::

    baas-verify receipt RECEIPT.json --rpc URL [--record RECORD.json --salt HEX]
                [--confirmations N] [--contract ADDRESS]
    baas-verify consistency PROOF.json --rpc URL [--contract ADDRESS]
    baas-verify anchors CHAIN.json --rpc URL [--contract ADDRESS]

This is what a user runs to check us without trusting us: the only inputs are the document,
an Ethereum JSON-RPC endpoint of the user's choosing and, optionally, the record and its salt
(from the gateway's read) and the contract address as we published it. Without ``--contract``
the contract the document names is read, and its address is printed to compare.

Receipts v1 (a record's) and v2 (a ledger operation's: the steps also check its outcome and
print the executed operation, one event a line) are both read.

Every step (:mod:`node.merkle.verify`) is printed with ``ok`` or ``FAILED: why``. Exit codes
(docs/verifiable-log.md): 0 everything holds; 1 a step failed (a malformed document fails
``... format``; an unreachable RPC fails the first chain step); 3 everything holds but the
anchor has fewer confirmations than asked; 2 usage errors (bad arguments, unreadable files).
No path prints a stack trace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node.errors import BaasError, UnsupportedFormat
from node.merkle.leaf import SALT_BYTES
from node.merkle.receipt import AnchorChainDoc, ConsistencyDoc, Receipt
from node.merkle.verify import (
    ChainReader,
    Outcome,
    Step,
    Verdict,
    verify_anchor_chain,
    verify_consistency_doc,
    verify_receipt,
)

__all__ = ["EXIT_FAILED", "EXIT_NOT_FINAL", "EXIT_OK", "EXIT_USAGE", "ReaderFactory", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FINAL = 3
RPC_TIMEOUT_S = 15
FILE_BYTES_MAX = 64 * 1024 * 1024

ReaderFactory = Callable[[str, str], ChainReader]
"""``(rpc_url, contract_address) -> ChainReader``; tests inject one over eth-tester."""


class _UsageError(Exception):
    pass


def web3_reader(rpc_url: str, contract: str) -> ChainReader:
    """The real reader: JSON-RPC over HTTP(S) to ``rpc_url``."""
    from web3 import HTTPProvider, Web3  # web3 takes ~0.5 s to import: only when needed

    from node.anchoring.registry import RegistryReader

    provider = HTTPProvider(rpc_url, request_kwargs={"timeout": RPC_TIMEOUT_S})
    return RegistryReader(Web3(provider), contract)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baas-verify",
        description="Verify BaaS B&P receipts and log anchors against an Ethereum chain.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--rpc", required=True, metavar="URL", help="Ethereum JSON-RPC URL")
        sub.add_argument(
            "--contract",
            metavar="ADDRESS",
            help="the AnchorRegistry address as published (default: the one the document names)",
        )

    receipt = commands.add_parser("receipt", help="verify a record's receipt")
    receipt.add_argument("document", metavar="RECEIPT.json")
    common(receipt)
    receipt.add_argument("--record", metavar="RECORD.json", help="the record, to check the leaf")
    receipt.add_argument("--salt", metavar="HEX", help="the record's plaintext salt (64 hex)")
    receipt.add_argument(
        "--confirmations",
        type=int,
        default=1,
        metavar="N",
        help="blocks the anchor must be buried under, its own included (default 1)",
    )
    consistency = commands.add_parser("consistency", help="verify a consistency proof")
    consistency.add_argument("document", metavar="PROOF.json")
    common(consistency)
    anchors = commands.add_parser("anchors", help="verify a chain of anchors")
    anchors.add_argument("document", metavar="CHAIN.json")
    common(anchors)
    return parser


def _read(path: str) -> bytes:
    try:
        with Path(path).open("rb") as f:
            data = f.read(FILE_BYTES_MAX + 1)
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > FILE_BYTES_MAX:
        raise _UsageError(f"{path} is larger than {FILE_BYTES_MAX} bytes")
    return data


def _salt(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        salt = bytes.fromhex(text.removeprefix("0x"))
    except ValueError as exc:
        raise _UsageError("--salt must be hex") from exc
    if len(salt) != SALT_BYTES:
        raise _UsageError(f"--salt must be {SALT_BYTES} bytes ({2 * SALT_BYTES} hex digits)")
    return salt


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.rpc.startswith(("http://", "https://")):
        raise _UsageError("--rpc must be an http:// or https:// URL")
    if args.command == "receipt":
        if (args.record is None) != (args.salt is None):
            raise _UsageError("--record and --salt go together")
        if args.confirmations < 1:
            raise _UsageError("--confirmations must be at least 1")
    if args.contract is not None:
        from eth_utils.address import is_address, to_checksum_address

        if not is_address(args.contract):
            raise _UsageError(f"--contract {args.contract!r} is not an Ethereum address")
        args.contract = to_checksum_address(args.contract)


def _run(args: argparse.Namespace, factory: ReaderFactory) -> Verdict:
    raw = _read(args.document)
    record = _read(args.record) if args.command == "receipt" and args.record else None
    salt = _salt(args.salt) if args.command == "receipt" else None
    doc: Receipt | ConsistencyDoc | AnchorChainDoc
    try:
        if args.command == "receipt":
            doc = Receipt.from_json(raw)
            named = doc.anchor.contract
        elif args.command == "consistency":
            doc = ConsistencyDoc.from_json(raw)
            named = doc.from_anchor.contract
        else:
            doc = AnchorChainDoc.from_json(raw)
            named = doc.anchors[0].contract
    except UnsupportedFormat as exc:  # the same step verify_* would report; no chain needed
        return Verdict((Step(f"{args.command} format", Outcome.FAILED, exc.detail),))
    address = args.contract or named
    if args.contract is None:
        print(f"contract {address} (as the document names it: compare the published address)")
    reader = factory(args.rpc, address)
    if isinstance(doc, Receipt):
        return verify_receipt(
            doc, reader, record_json=record, salt=salt, confirmations=args.confirmations
        )
    if isinstance(doc, ConsistencyDoc):
        return verify_consistency_doc(doc, reader)
    return verify_anchor_chain(doc, reader)


def _print(verdict: Verdict) -> int:
    for step in verdict.steps:
        if step.outcome is Outcome.OK:
            print(f"{step.name}: ok" + (f" ({step.detail})" if step.detail else ""))
        elif step.outcome is Outcome.FAILED:
            print(f"{step.name}: FAILED: {step.detail}")
        elif step.outcome is Outcome.PENDING:
            print(f"{step.name}: NOT FINAL: {step.detail}")
        else:
            print(f"{step.name}: skipped ({step.detail})")
        for line in step.lines:  # e.g. the executed operation of a v2 receipt, event by event
            print(f"    {line}")
    failure = verdict.first_failure
    if failure is not None:
        print(f"result: FAILED at step {failure.name!r}")
        return EXIT_FAILED
    if verdict.pending:
        print("result: everything holds, but the anchor is not final yet")
        return EXIT_NOT_FINAL
    print("result: verified")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, *, reader_factory: ReaderFactory | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_arguments(args)
        verdict = _run(args, reader_factory or web3_reader)
    except _UsageError as exc:
        print(f"baas-verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BaasError as exc:  # the reader could not even be built
        print(f"baas-verify: {exc.detail} [{exc.code}]", file=sys.stderr)
        return EXIT_FAILED
    return _print(verdict)


if __name__ == "__main__":
    sys.exit(main())
