// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title BaasToken: the BAAS ERC-20 of development chains (eth-tester, anvil).
/// @notice OpenZeppelin's audited ERC20 (18 decimals), its whole supply minted once to `holder`,
/// who hands it out to test users. No mint or burn after deployment, so the supply a test reads
/// is fixed. On a public chain this contract is never deployed: the real BAAS token's address is
/// configured for the vault instead.
contract BaasToken is ERC20 {
    constructor(address holder, uint256 supply) ERC20("BaaS B&P token", "BAAS") {
        _mint(holder, supply);
    }
}
