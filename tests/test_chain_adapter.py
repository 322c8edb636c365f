"""The chain adapter and ``baas-chain``: key files, sign/broadcast/inclusion on eth-tester and a
real anvil (idempotent rebroadcast, consumed nonces, reorgs), error translation, and the served
eth-tester chain as a real subprocess shared over HTTP JSON-RPC."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from chains import (  # noqa: F401
    ANVIL_DEV_KEYS,
    REPO,
    TestChain,
    chain_fixture,
    free_port,
    mined,
    rpc,
    running_anvil,
    stop_process,
)
from hexbytes import HexBytes

from node.anchoring.chain import (
    AnchorChain,
    AnchoredEvent,
    ChainMisconfigured,
    ChainRejected,
    ChainUnavailable,
    connect_web3,
    deploy_registry,
)
from node.anchoring.keyfile import ChainKey, load_key_file, write_key_file
from node.errors import ConfigError

ROOT_A = bytes.fromhex("a1" * 32)
ROOT_B = bytes.fromhex("b2" * 32)
DEV_KEY_HEX = ANVIL_DEV_KEYS[0][2:]
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
SERVE_START_S_MAX = 30.0


# -- key files ---------------------------------------------------------------------------------


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "chain.key"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("text", [DEV_KEY_HEX, "0x" + DEV_KEY_HEX + "\n", DEV_KEY_HEX.upper()])
def test_key_file_loads_with_or_without_0x(tmp_path: Path, text: str) -> None:
    assert load_key_file(key_file(tmp_path, text)).address == DEV_ADDRESS


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o001])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ConfigError) as caught:
        load_key_file(key_file(tmp_path, DEV_KEY_HEX, mode))
    assert "chmod 600" in caught.value.detail
    assert DEV_KEY_HEX not in str(caught.value)


def test_key_file_owner_only_modes_load(tmp_path: Path) -> None:
    assert load_key_file(key_file(tmp_path, DEV_KEY_HEX, 0o400)).address == DEV_ADDRESS


@pytest.mark.parametrize(
    "text",
    [
        "",
        DEV_KEY_HEX[:-2],
        DEV_KEY_HEX + "00",
        DEV_KEY_HEX[:-1] + "g",
        DEV_KEY_HEX + "\n" + DEV_KEY_HEX,
        "0" * 64,  # zero is not a key
        "f" * 64,  # above the curve order
    ],
)
def test_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_key_file(key_file(tmp_path, text))
    assert (text.strip() or "@") not in str(caught.value)


def test_key_file_missing_or_symlink_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_key_file(tmp_path / "absent.key")
    target = key_file(tmp_path, DEV_KEY_HEX)
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(ConfigError):
        load_key_file(link)


def test_chain_key_never_shows_the_key() -> None:
    key = ChainKey(bytes.fromhex(DEV_KEY_HEX))
    shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"key": key})]
    for text in shown:
        assert DEV_KEY_HEX not in text.lower()
        assert DEV_ADDRESS in text
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(AttributeError):
        key.address = "0x0"
    assert not hasattr(key, "__dict__")


def test_write_key_file_is_0600_even_under_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "new.key"
    previous = os.umask(0)
    try:
        key = write_key_file(path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_key_file(path) == key
    with pytest.raises(ConfigError, match="already exists"):
        write_key_file(path)
    assert load_key_file(path) == key  # not overwritten


def run_cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.chain_cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


# -- the adapter on both chains ----------------------------------------------------------------


def test_sign_broadcast_inclusion(chain: TestChain) -> None:
    anchors = chain.anchors
    nonce = anchors.account_nonce()
    head_before = anchors.head()
    signed = anchors.sign_anchor(1, 3, ROOT_A, nonce)
    assert (signed.sender, signed.nonce) == (chain.key.address, nonce)
    assert (signed.chain_id, signed.contract) == (anchors.chain_id(), chain.contract)
    assert len(signed.tx_hash) == 32
    assert anchors.inclusion(signed.tx_hash) is None  # signed, not sent
    assert anchors.broadcast(signed.raw) == "sent"
    inclusion = mined(anchors, signed.tx_hash)
    assert inclusion is not None and inclusion.status == 1
    assert inclusion.block_number > head_before
    assert anchors.block_hash(inclusion.block_number) == inclusion.block_hash
    assert anchors.head() >= inclusion.block_number
    assert anchors.block_hash(anchors.head() + 100) is None
    assert anchors.account_nonce() == nonce + 1
    assert anchors.anchor_of(1) == (3, ROOT_A, inclusion.block_number)


def test_head_block_names_the_head_and_requests_are_counted_by_method(chain: TestChain) -> None:
    anchors = chain.anchors
    before = dict(anchors.rpc_calls)
    number, block_hash = anchors.head_block()
    assert anchors.block_hash(number) == block_hash
    assert anchors.head() >= number
    signed = anchors.sign_anchor(1, 3, ROOT_A, anchors.account_nonce())
    assert len(signed.raw) > 0
    made = {m: n - before.get(m, 0) for m, n in anchors.rpc_calls.items()}
    # head_block, block_hash, the fee's latest block: three eth_getBlockByNumber
    assert made["eth_getBlockByNumber"] == 3
    assert made["eth_blockNumber"] == 1
    assert made["eth_getTransactionCount"] == 1
    assert made["eth_maxPriorityFeePerGas"] == 1


def test_broadcasting_the_same_transaction_twice_is_harmless(chain: TestChain) -> None:
    anchors = chain.anchors
    nonce = anchors.account_nonce()
    signed = anchors.sign_anchor(1, 3, ROOT_A, nonce)
    assert anchors.broadcast(signed.raw) == "sent"
    assert anchors.broadcast(signed.raw) == "known"
    assert anchors.broadcast(signed.raw) == "known"
    assert anchors.next_batch_id() == 2
    assert anchors.account_nonce() == nonce + 1
    assert anchors.anchored_in(signed.tx_hash) == (AnchoredEvent(1, ROOT_A, 3),)
    events = anchors._contract.events.Anchored().get_logs(from_block=0)
    assert len(events) == 1


def test_a_transaction_whose_nonce_was_consumed_reports_nonce_used(chain: TestChain) -> None:
    anchors = chain.anchors
    nonce = anchors.account_nonce()
    first = anchors.sign_anchor(1, 3, ROOT_A, nonce)
    rival = anchors.sign_anchor(1, 4, ROOT_B, nonce)  # same nonce, other content
    assert first.tx_hash != rival.tx_hash
    assert anchors.broadcast(first.raw) == "sent"
    assert anchors.broadcast(rival.raw) == "nonce_used"
    assert anchors.inclusion(rival.tx_hash) is None
    assert anchors.anchor_of(1).root == ROOT_A
    # a read-only view (another node's) judges the same raw bytes alike
    other = AnchorChain(chain.w3, chain.contract)
    assert other.broadcast(rival.raw) == "nonce_used"
    assert other.broadcast(first.raw) == "known"


def test_reorg_drops_the_inclusion_and_rebroadcast_mines_it_again(chain: TestChain) -> None:
    anchors = chain.anchors
    snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    signed = anchors.sign_anchor(1, 3, ROOT_A, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    first = mined(anchors, signed.tx_hash)
    receipt = chain.w3.eth.get_transaction_receipt(HexBytes(signed.tx_hash))
    reverted = chain.w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
    assert "error" not in reverted
    assert anchors.inclusion(signed.tx_hash) is None
    assert anchors.block_hash(first.block_number) is None  # the chain is shorter now
    assert anchors.next_batch_id() == 1
    chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    replaced = anchors.block_hash(first.block_number)
    assert replaced is not None and replaced != first.block_hash
    # a node that still serves the old receipt (geth may, for a while) is not believed
    with mock.patch.object(chain.w3.eth, "get_transaction_receipt", return_value=receipt):
        assert chain.w3.eth.get_transaction_receipt(HexBytes(signed.tx_hash)) is receipt
        assert anchors.inclusion(signed.tx_hash) is None
    # the same bytes, broadcast again, are mined on the new branch
    assert anchors.broadcast(signed.raw) == "sent"
    again = mined(anchors, signed.tx_hash)
    assert again is not None and again.block_hash != first.block_hash
    assert anchors.anchor_of(1).root == ROOT_A


def test_refusals_are_translated(chain: TestChain) -> None:
    broke = AnchorChain(chain.w3, chain.contract, ChainKey.generate())
    signed = broke.sign_anchor(1, 1, ROOT_A, broke.account_nonce())
    with pytest.raises(ChainRejected) as caught:
        broke.broadcast(signed.raw)
    assert caught.value.code == "chain_insufficient_funds"
    with pytest.raises(ChainRejected) as reverted:
        chain.anchors.simulate_anchor(2, 1, ROOT_A)
    assert reverted.value.code == "chain_reverted"
    assert reverted.value.revert is not None and reverted.value.revert.name == "BatchOutOfOrder"


def test_no_contract_at_the_address_is_a_config_error(chain: TestChain) -> None:
    chain.anchors.check_contract()
    with pytest.raises(ChainMisconfigured):
        AnchorChain(chain.w3, chain.key.address).check_contract()
    with pytest.raises(ChainMisconfigured):
        AnchorChain(chain.w3, "0x1234")


def test_an_unreachable_chain_is_unavailable() -> None:
    w3 = connect_web3(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    anchors = AnchorChain(w3, DEV_ADDRESS, ChainKey(bytes.fromhex(DEV_KEY_HEX)))
    for read in (anchors.head, anchors.next_batch_id, anchors.account_nonce):
        with pytest.raises(ChainUnavailable) as caught:
            read()
        assert caught.value.code == "chain_unavailable"
    with pytest.raises(ChainUnavailable):
        anchors.broadcast(b"\x02\x01")
    with pytest.raises(ChainMisconfigured):
        connect_web3("ftp://127.0.0.1:1")


def test_pending_transaction_rebroadcast_is_known() -> None:
    """While the first send waits in anvil's pool (mining on demand), a second is "known"."""
    with running_anvil() as node:
        w3 = connect_web3(node.url)
        key = ChainKey(bytes.fromhex(ANVIL_DEV_KEYS[1][2:]))
        anchors = AnchorChain(w3, deploy_registry(w3, None, [key.address]), key)
        assert rpc(node.url, "evm_setAutomine", [False]) is None
        signed = anchors.sign_anchor(1, 2, ROOT_A, anchors.account_nonce())
        assert anchors.broadcast(signed.raw) == "sent"
        assert anchors.inclusion(signed.tx_hash) is None  # pending
        assert anchors.account_nonce() == signed.nonce + 1  # the pool counts
        assert anchors.broadcast(signed.raw) == "known"
        rival = anchors.sign_anchor(1, 3, ROOT_B, signed.nonce)
        with pytest.raises(ChainRejected) as caught:
            anchors.broadcast(rival.raw)
        assert caught.value.code == "chain_replacement_underpriced"
        rpc(node.url, "evm_mine")
        inclusion = anchors.inclusion(signed.tx_hash)
        assert inclusion is not None and inclusion.status == 1
        assert anchors.broadcast(signed.raw) == "known"
        assert anchors.broadcast(rival.raw) == "nonce_used"


def test_anvil_dev_keys_are_its_funded_accounts(chain: TestChain) -> None:
    if chain.kind != "anvil":
        assert chain.anchors.chain_id() == chain.w3.eth.chain_id
        return
    addresses = [ChainKey(bytes.fromhex(key[2:])).address for key in ANVIL_DEV_KEYS]
    assert list(chain.w3.eth.accounts[: len(addresses)]) == addresses
    assert chain.anchors.chain_id() == 31337


# -- baas-chain serve as a real process --------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    chain_id: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    command = [sys.executable, "-m", "tools.chain_cli", "serve", "--port", "0"]
    command += ["--block-time", "0.2", "--fund", DEV_ADDRESS]
    log_path = tmp_path_factory.mktemp("serve") / "stderr.log"
    with log_path.open("wb") as log:  # a file, not a pipe: a chatty server cannot block on it
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the ready line (blocks until printed or exit)
        assert line, f"serve exited: {log_path.read_text()[-2000:]}"
        ready = json.loads(line)
        assert ready["url"].startswith("http://127.0.0.1:")
        yield Served(ready["url"], int(ready["chain_id"]), process)
    finally:
        if process.stdout is not None:
            process.stdout.close()
        stop_process(process)
    assert process.returncode == 0, log_path.read_text()[-2000:]  # SIGTERM: a clean stop
    assert "Traceback" not in log_path.read_text()


def post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_served_chain_deploy_and_anchor(served: Served, tmp_path: Path) -> None:
    owner_file, node_file = tmp_path / "owner.key", tmp_path / "node.key"
    keygen = run_cli("keygen", "--out", str(node_file))
    assert keygen.returncode == 0, keygen.stderr
    node_key = load_key_file(node_file)
    assert json.loads(keygen.stdout)["address"] == node_key.address
    assert node_file.read_text().strip()[2:] not in keygen.stdout + keygen.stderr
    write_key_file(owner_file)

    unfunded = run_cli(
        "deploy", "--rpc", served.url, "--key-file", str(owner_file),
        "--submitter", node_key.address,
    )  # fmt: skip
    assert unfunded.returncode == 1
    assert "Traceback" not in unfunded.stderr and "funds" in unfunded.stderr

    deployed = run_cli(
        "deploy", "--rpc", served.url, "--key-file", str(owner_file),
        "--submitter", node_key.address, "--fund-from-tester",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stderr
    answer = json.loads(deployed.stdout)
    assert answer["chain_id"] == served.chain_id
    assert answer["owner"] == load_key_file(owner_file).address

    anchors = AnchorChain(connect_web3(served.url), answer["contract"], node_key)
    anchors.check_contract()
    assert anchors.chain_id() == served.chain_id
    signed = anchors.sign_anchor(1, 5, ROOT_A, anchors.account_nonce())
    assert anchors.broadcast(signed.raw) == "sent"
    assert anchors.broadcast(signed.raw) == "known"
    inclusion = mined(anchors, signed.tx_hash)
    assert inclusion is not None and inclusion.status == 1
    assert anchors.anchor_of(1) == (5, ROOT_A, inclusion.block_number)
    assert anchors.anchored_in(signed.tx_hash) == (AnchoredEvent(1, ROOT_A, 5),)
    rival = anchors.sign_anchor(1, 6, ROOT_B, signed.nonce)
    assert anchors.broadcast(rival.raw) == "nonce_used"
    with pytest.raises(ChainRejected) as reverted:  # error 3 with data, as anvil answers
        anchors.simulate_anchor(1, 6, ROOT_B)
    assert reverted.value.revert is not None
    assert reverted.value.revert.name == "BatchOutOfOrder"
    assert reverted.value.revert.args == (2, 1)


def test_served_chain_advances_and_snapshots(served: Served) -> None:
    start = int(str(rpc(served.url, "eth_blockNumber")), 16)
    deadline = time.monotonic() + 5
    while int(str(rpc(served.url, "eth_blockNumber")), 16) < start + 3:
        assert time.monotonic() < deadline, "--block-time did not advance the head"
        time.sleep(0.05)
    block = rpc(served.url, "eth_getBlockByNumber", ["latest", False])
    assert isinstance(block, dict)
    assert block["number"].startswith("0x") and len(block["logsBloom"]) == 2 + 512
    assert rpc(served.url, "eth_getBalance", [DEV_ADDRESS, "latest"]) == hex(100 * 10**18)
    snapshot = rpc(served.url, "evm_snapshot")
    assert rpc(served.url, "evm_revert", [snapshot]) is True


def test_serve_refuses_a_taken_port(served: Served) -> None:
    port = served.url.rsplit(":", 1)[1]
    taken = run_cli("serve", "--port", port)
    assert taken.returncode == 1
    assert "cannot serve" in taken.stderr and "Traceback" not in taken.stderr


def test_served_chain_answers_json_rpc_errors(served: Served) -> None:
    status, answer = post(served.url, b"{not json")
    assert status == 200 and answer["error"]["code"] == -32700
    status, answer = post(served.url, b"[]")
    assert answer["error"]["code"] == -32600
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "no_such_method", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_getBalance", "params": ["0xzz", "latest"]},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_getBalance", "params": {"a": 1}},
        "not a request",
    ]
    status, answers = post(served.url, json.dumps(batch).encode())
    assert status == 200 and len(answers) == 5
    assert int(answers[0]["result"], 16) == served.chain_id
    assert [answer.get("error", {}).get("code") for answer in answers[1:]] == [
        -32601,
        -32000,
        -32602,
        -32600,
    ]
    assert all("Traceback" not in json.dumps(answer) for answer in answers)
    status, answer = post(served.url, b"[" + b" " * (1 << 20) + b"]")
    assert status == 413 and answer["error"]["code"] == -32600
    too_many = [{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(101)]
    status, answer = post(served.url, json.dumps(too_many).encode())
    assert answer["error"]["code"] == -32600
