"""The AnchorRegistry contract artifact (ABI + bytecode) and its binding to a web3 connection.

The artifact is compiled from ``contracts/AnchorRegistry.sol`` by ``contracts/compile.mjs``
(pinned npm ``solc``, evmVersion ``cancun``) and committed, so running needs no compiler; CI
recompiles and byte-compares it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["ARTIFACT_NAME", "load_artifact"]

ARTIFACT_NAME = "AnchorRegistry.json"


@cache
def load_artifact() -> dict[str, Any]:
    """The committed artifact: ``abi``, ``bytecode``, ``deployedBytecode``, compiler settings."""
    text = resources.files("node.anchoring").joinpath("artifacts", ARTIFACT_NAME).read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact
