"""The node's authenticated aiohttp HTTP API, used by gateways."""
