"""The blockchain core's contracts: the BAAS token, the vault and its owner (issue 15)."""
