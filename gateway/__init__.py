"""The BaaS gateway: partner/user HTTP API; encrypts records and spreads them over the nodes."""
