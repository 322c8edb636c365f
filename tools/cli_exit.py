"""How the operator commands that print one JSON result end: the result on stdout and exit 0,
or one line on stderr and :data:`EXIT_REFUSED` for a refused request or a file that cannot be
read (never a stack trace)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from node.errors import BaasError

__all__ = ["EXIT_REFUSED", "print_json_result"]

EXIT_REFUSED = 1


def print_json_result(prog: str, compute: Callable[[], object]) -> int:
    """Runs ``compute`` and prints its result as indented JSON; the process's exit code."""
    try:
        result = compute()
    except BaasError as exc:
        print(f"{prog}: {exc.detail} [{exc.code}]", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:
        print(f"{prog}: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return EXIT_REFUSED
    print(json.dumps(result, indent=2))
    return 0
