"""Command-line tools: cluster init, the local cluster runner, and (later) status and bench."""
