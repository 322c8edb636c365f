"""Entry point of ``python -m node.sim`` (see :mod:`node.sim.cli`)."""

from node.sim.cli import main

raise SystemExit(main())
