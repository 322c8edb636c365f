"""``baas-chain``: a shared development chain, the registry's deployment, chain keys.

::

    baas-chain serve --port 8545 [--host 127.0.0.1] [--block-time 1] [--fund 0xADDR ...]
    baas-chain deploy --rpc URL --key-file owner.key --submitter 0xADDR [...] [--fund-from-tester]
    baas-chain allow --rpc URL --key-file owner.key --contract 0xREG --submitter 0xADDR [--remove]
    baas-chain keygen --out node.key

``serve`` puts the in-process eth-tester chain (web3's ``EthereumTesterProvider``) behind HTTP
JSON-RPC on 127.0.0.1 (``--host``: another IP, e.g. a container's address), so several node
processes and ``baas-verify --rpc`` share one chain without anvil. Each request (or batch) is
forwarded to the provider with its eth-tester middleware, so wire params are read and results
written as a JSON-RPC node would: quantities as hex, reverts as error 3 with the revert ``data``
(web3 raises ``ContractCustomError`` as with anvil and geth), eth-tester's "Invalid transaction
nonce" as ``nonce too low``/``too high``. Failures answer JSON-RPC errors, never a stack trace.
eth-tester is not thread-safe, so one worker thread runs every call in arrival order. eth-tester
mines each transaction at once (automine); ``--block-time S`` also mines an empty block every S
seconds so confirmations advance. ``evm_snapshot``/``evm_revert``/``evm_mine`` are served (a
reorg for tests). ``--fund`` gives each address 100 ETH from tester account 0. When ready it
prints one JSON line: ``{"url": ..., "chain_id": ...}``; ``--port 0`` picks a free port.

``deploy`` signs with the key file's account, which becomes the registry's owner, and prints
``{"contract", "chain_id", "owner"}``. On a development chain (``serve`` or anvil)
``--fund-from-tester`` first tops up the owner and every submitter below 1 ETH to 100 ETH from
the chain's first unlocked dev account; on a real network there is none and it is refused.

``keygen`` writes a new key file (mode 0600, never overwritten) and prints only its address.

Output is JSON on stdout; refusals print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import re
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from aiohttp import web
from eth_tester.exceptions import TransactionFailed
from web3 import EthereumTesterProvider, Web3
from web3.types import RPCEndpoint

from node.anchoring.chain import (
    ChainMisconfigured,
    connect_web3,
    deploy_registry,
    fund,
    read_chain_id,
    revert_data,
    set_submitter,
)
from node.anchoring.keyfile import load_key_file, write_key_file
from node.errors import BaasError, ConfigError
from tools.local_chain import top_up

__all__ = ["TesterRpc", "main"]

log = logging.getLogger("baas.chain")

EXIT_REFUSED = 1
HOST = "127.0.0.1"
RPC_BODY_BYTES_MAX = 1 << 20
RPC_BATCH_REQUESTS_MAX = 100
ERROR_MESSAGE_CHARS_MAX = 500
FUND_WEI = 100 * 10**18
BLOCK_TIME_S_MIN = 0.05

# JSON-RPC 2.0 error codes (and the ones Ethereum nodes use).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
TX_REJECTED = -32003
EXECUTION_REVERTED = 3

_NONCE_MESSAGE = re.compile(r"Invalid transaction nonce: Expected (\d+), but got (\d+)")
_BLOOM_HEX_DIGITS = 512


# -- eth-tester as a JSON-RPC node -------------------------------------------------------------


def _to_wire(value: Any, key: str | None = None) -> Any:
    """eth-tester's Python results -> JSON-RPC values (quantities hex, bytes 0x-hex)."""
    if isinstance(value, bool) or value is None or isinstance(value, str | float):
        return value
    if isinstance(value, int):
        if key == "logsBloom":
            return "0x" + format(value, "x").zfill(_BLOOM_HEX_DIGITS)
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): _to_wire(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_wire(item) for item in value]
    raise TypeError(f"cannot put {type(value).__name__} on the wire")


class RpcError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str, data: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def as_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class TesterRpc:
    """One eth-tester chain answering JSON-RPC calls (not thread-safe: call from one thread)."""

    def __init__(self) -> None:
        self.provider = EthereumTesterProvider()
        self.w3 = Web3(self.provider, middleware=[])
        self._request: Callable[[RPCEndpoint, Any], Any] = self.provider.request_func(
            self.w3, self.w3.middleware_onion
        )

    def call(self, method: str, params: list[Any]) -> Any:
        """The wire ``result`` of ``method``; RpcError for a JSON-RPC error."""
        try:
            response = self._request(RPCEndpoint(method), params)
        except TransactionFailed as exc:
            data = revert_data(exc)
            raise RpcError(
                EXECUTION_REVERTED,
                "execution reverted",
                None if data is None else "0x" + data.hex(),
            ) from exc
        except Exception as exc:  # eth-tester's validation errors: report, keep serving
            raise _refusal(exc) from exc
        if "error" in response:
            error = response["error"]
            raise RpcError(int(error.get("code", SERVER_ERROR)), str(error.get("message")))
        result = response.get("result")
        if method == "evm_revert" and result is None:
            result = True  # as anvil answers
        return _to_wire(result)


def _refusal(exc: Exception) -> RpcError:
    message = f"{exc}"[:ERROR_MESSAGE_CHARS_MAX] or type(exc).__name__
    nonce = _NONCE_MESSAGE.search(message)
    if nonce is not None:
        expected, got = int(nonce.group(1)), int(nonce.group(2))
        word = "nonce too low" if got < expected else "nonce too high"
        return RpcError(TX_REJECTED, f"{word}: {message}")
    if "cannot afford" in message:
        return RpcError(TX_REJECTED, f"insufficient funds for gas * price + value: {message}")
    if isinstance(exc, TypeError | KeyError | AttributeError | IndexError):
        return RpcError(INVALID_PARAMS, f"invalid params: {type(exc).__name__}: {message}")
    return RpcError(SERVER_ERROR, message)


# -- the HTTP server ---------------------------------------------------------------------------

TESTER_KEY = web.AppKey("tester", TesterRpc)
EXECUTOR_KEY = web.AppKey("executor", ThreadPoolExecutor)


def _error_response(request_id: Any, error: RpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": error.as_json()}


async def _answer_one(app: web.Application, item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict) or not isinstance(item.get("method"), str):
        return _error_response(None, RpcError(INVALID_REQUEST, "invalid request"))
    request_id = item.get("id")
    params = item.get("params", [])
    if not isinstance(params, list):
        return _error_response(request_id, RpcError(INVALID_PARAMS, "params must be an array"))
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(
            app[EXECUTOR_KEY], app[TESTER_KEY].call, item["method"], params
        )
    except RpcError as error:
        response = _error_response(request_id, error)
    except Exception as exc:  # a bug in us or eth-tester: log it, answer without a traceback
        log.exception("JSON-RPC %s failed", item["method"])
        response = _error_response(
            request_id, RpcError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
        )
    else:
        response = {"jsonrpc": "2.0", "id": request_id, "result": result}
    return None if "id" not in item else response


async def handle_rpc(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > RPC_BODY_BYTES_MAX:
        return _too_large()
    body = await request.content.read(RPC_BODY_BYTES_MAX + 1)
    if len(body) > RPC_BODY_BYTES_MAX:
        return _too_large()
    try:
        message = json.loads(body)
    except ValueError:
        return web.json_response(_error_response(None, RpcError(PARSE_ERROR, "parse error")))
    if isinstance(message, list):
        if not message or len(message) > RPC_BATCH_REQUESTS_MAX:
            error = RpcError(INVALID_REQUEST, f"a batch holds 1..{RPC_BATCH_REQUESTS_MAX} calls")
            return web.json_response(_error_response(None, error))
        answers = [await _answer_one(request.app, item) for item in message]
        present = [answer for answer in answers if answer is not None]
        return web.json_response(present) if present else web.Response(status=204)
    answer = await _answer_one(request.app, message)
    return web.json_response(answer) if answer is not None else web.Response(status=204)


# Browsers call the development chain from other origins (the dashboard's receipt verifier,
# and the same file opened from disk): answer as anvil does, any origin allowed.
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


async def handle_preflight(request: web.Request) -> web.Response:
    return web.Response(status=204, headers=_CORS)


async def _add_cors(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(_CORS)


def _too_large() -> web.Response:
    error = RpcError(INVALID_REQUEST, f"request body over {RPC_BODY_BYTES_MAX} bytes")
    return web.json_response(_error_response(None, error), status=413)


async def _mine_every(app: web.Application, block_time_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(block_time_s)
        await loop.run_in_executor(app[EXECUTOR_KEY], app[TESTER_KEY].call, "evm_mine", [])


async def serve(
    port: int, block_time_s: float | None, fund_addresses: Sequence[str], host: str = HOST
) -> None:
    tester = TesterRpc()
    for address in fund_addresses:
        fund(tester.w3, address, FUND_WEI)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eth-tester")
    app = web.Application(client_max_size=RPC_BODY_BYTES_MAX)
    app[TESTER_KEY] = tester
    app[EXECUTOR_KEY] = executor
    app.router.add_post("/", handle_rpc)
    app.router.add_route("OPTIONS", "/", handle_preflight)
    app.on_response_prepare.append(_add_cors)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    miner = (
        asyncio.create_task(_mine_every(app, block_time_s)) if block_time_s is not None else None
    )
    chain_id = int(tester.w3.eth.chain_id)
    print(json.dumps({"url": f"http://{host}:{bound_port}", "chain_id": chain_id}), flush=True)
    try:
        await stop.wait()
    finally:
        if miner is not None:
            miner.cancel()
        await runner.cleanup()
        executor.shutdown(wait=True)


# -- commands ----------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    if args.block_time is not None and args.block_time < BLOCK_TIME_S_MIN:
        raise ConfigError(f"--block-time must be at least {BLOCK_TIME_S_MIN} s")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    try:
        ipaddress.ip_address(args.host)
    except ValueError:
        raise ConfigError(f"--host {args.host!r} is not an IP address") from None
    for address in args.fund:
        if not Web3.is_address(address):
            raise ChainMisconfigured(f"--fund {address!r} is not an Ethereum address")
    try:
        asyncio.run(serve(args.port, args.block_time, args.fund, args.host))
    except OSError as exc:
        raise ConfigError(
            f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from exc
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    if not args.rpc.startswith(("http://", "https://")):
        raise ChainMisconfigured("deploy needs a shared chain: --rpc http(s)://...")
    for address in args.submitter:
        if not Web3.is_address(address):
            raise ChainMisconfigured(f"--submitter {address!r} is not an Ethereum address")
    key = load_key_file(args.key_file)
    w3 = connect_web3(args.rpc)
    if args.fund_from_tester:
        top_up(w3, [key.address, *args.submitter])
    contract = deploy_registry(w3, key, args.submitter)
    chain_id = read_chain_id(w3)
    print(json.dumps({"contract": contract, "chain_id": chain_id, "owner": key.address}))
    return 0


def _cmd_allow(args: argparse.Namespace) -> int:
    key = load_key_file(args.key_file)
    w3 = connect_web3(args.rpc)
    allowed = not args.remove
    set_submitter(w3, args.contract, key, args.submitter, allowed)
    print(json.dumps({"contract": args.contract, "submitter": args.submitter, "allowed": allowed}))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    key = write_key_file(args.out)
    print(json.dumps({"address": key.address, "key_file": args.out}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baas-chain", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="serve an eth-tester chain on 127.0.0.1")
    serve_cmd.add_argument("--port", type=int, required=True, help="0 picks a free port")
    serve_cmd.add_argument("--host", default=HOST, help="the IP to listen on")
    serve_cmd.add_argument("--block-time", type=float, default=None, metavar="S")
    serve_cmd.add_argument("--fund", action="append", default=[], metavar="ADDR")
    serve_cmd.set_defaults(run=_cmd_serve)

    deploy_cmd = commands.add_parser("deploy", help="deploy the AnchorRegistry")
    deploy_cmd.add_argument("--rpc", required=True)
    deploy_cmd.add_argument("--key-file", required=True)
    deploy_cmd.add_argument("--submitter", action="append", required=True, metavar="ADDR")
    deploy_cmd.add_argument("--fund-from-tester", action="store_true")
    deploy_cmd.set_defaults(run=_cmd_deploy)

    allow_cmd = commands.add_parser("allow", help="allow or remove a submitter (owner only)")
    allow_cmd.add_argument("--rpc", required=True)
    allow_cmd.add_argument("--key-file", required=True)
    allow_cmd.add_argument("--contract", required=True)
    allow_cmd.add_argument("--submitter", required=True, metavar="ADDR")
    allow_cmd.add_argument("--remove", action="store_true")
    allow_cmd.set_defaults(run=_cmd_allow)

    keygen_cmd = commands.add_parser("keygen", help="write a new 0600 chain key file")
    keygen_cmd.add_argument("--out", required=True)
    keygen_cmd.set_defaults(run=_cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    run = cast(Callable[[argparse.Namespace], int], args.run)
    try:
        return run(args)
    except BaasError as exc:
        print(f"baas-chain {args.command}: {exc.detail}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
