// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";

/// @title BaasVault: holds BAAS and registered partner tokens for the BaaS B&P ledger.
/// @notice What the ledger says users own on chain is held here.
///
/// Deposits: `deposit(token, amount, wallet)` pulls a registered token from the sender and emits
/// `Deposited(token, from, wallet, received)`. `wallet` is the ledger's opaque 16-byte wallet id
/// (business/identity/ids.py `wallet_id`: a hash of the user's address and the mode), so the
/// chain carries no personal data, and a deposit may come from any address (an exchange, a
/// partner) yet credit the named wallet. The amount credited is what the vault's balance
/// actually grew by, so a fee-on-transfer token can never be credited more than is held.
///
/// Withdrawals: `withdraw(ws, userSigs, nodeSigs)` pays one or more withdrawals in one
/// transaction. Each withdrawal is the EIP-712 struct
///   Withdrawal(bytes32 id,address token,uint256 amount,address user,address to,bytes16 wallet,uint64 deadline)
/// under the domain {name: "BaaS B&P network", version: "1", chainId, verifyingContract: this}
/// (the name and version of business/identity/eip712.py; verifyingContract added because a
/// contract checks these), signed by `user`, the wallet's own key. The signing nodes sign ONE
/// digest for the whole transaction, the EIP-712 struct
///   WithdrawalBatch(Withdrawal[] withdrawals)
/// (standard EIP-712 array encoding, so any EIP-712 library computes it): at least `threshold`
/// signatures of distinct signers, sorted by signer address strictly increasing (a duplicate or
/// an unsorted list is refused with one comparison, no set in storage). Why one digest for the
/// nodes: an ecrecover costs ~3,000 gas plus hashing and calldata; with M = 2 per withdrawal a
/// batch of 20 would spend ~40 recoveries, with one batch digest it spends M + 20. Every node
/// still sees and checks every withdrawal it signs (they are in the digest).
///
/// Each withdrawal id is paid at most once: `paid` is a bitmap keyed by the id (256 ids per
/// storage word), so ids the ledger allocates consecutively share words and a new word is
/// written once per 256 withdrawals; any other id is still refused twice, it merely costs a
/// fresh word. Each token has a limit per fixed window of `window` seconds (windows aligned to
/// multiples of `window`; one storage word per token: bounded state). A withdrawal past its
/// `deadline` (Unix seconds) is refused, so a signed withdrawal the ledger has voided cannot be
/// paid later.
///
/// Roles: the owner (an OpenZeppelin TimelockController whose proposer is the operators'
/// OperatorMultisig) registers tokens and sets limits, replaces the signing nodes and the
/// threshold, sets guardians and unpauses. Any one guardian can `pause` at once: deposits and
/// withdrawals stop until the owner, after the timelock's delay, unpauses. Ownership cannot be
/// renounced (the vault would be frozen for good).
///
/// Checks run in a fixed order, so the same input always fails with the same error: batch
/// shape, node signatures, then per withdrawal: deadline, id already paid, token registered,
/// amount, recipient, user signature, window limit.
contract BaasVault is EIP712, Ownable, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Withdrawals one transaction may carry (bounds its gas).
    uint256 public constant WITHDRAWALS_PER_TX_MAX = 64;
    /// @notice Signing nodes the vault accepts (bounds the signature check).
    uint256 public constant SIGNERS_MAX = 16;

    bytes32 public constant WITHDRAWAL_TYPEHASH = keccak256(
        "Withdrawal(bytes32 id,address token,uint256 amount,address user,address to,bytes16 wallet,uint64 deadline)"
    );
    bytes32 public constant BATCH_TYPEHASH = keccak256(
        "WithdrawalBatch(Withdrawal[] withdrawals)"
        "Withdrawal(bytes32 id,address token,uint256 amount,address user,address to,bytes16 wallet,uint64 deadline)"
    );

    struct Withdrawal {
        bytes32 id;
        address token;
        uint256 amount;
        address user;
        address to;
        bytes16 wallet;
        uint64 deadline;
    }

    /// @dev One storage word, read once per withdrawal.
    struct TokenRule {
        uint128 limit;
        uint64 window;
        bool registered;
    }

    /// @dev One storage word per token, written once per withdrawal (warm after the first).
    struct WindowUse {
        uint128 spent;
        uint64 start;
    }

    mapping(address => TokenRule) public tokenRules;
    mapping(address => WindowUse) public windowUse;
    mapping(uint256 => uint256) private paidBits;
    address[] private signerList;
    mapping(address => bool) public isSigner;
    uint256 public threshold;
    mapping(address => bool) public isGuardian;

    event Deposited(address indexed token, address indexed from, bytes16 indexed wallet, uint256 amount);
    event Withdrawn(bytes32 indexed id, address indexed token, address indexed to, bytes16 wallet, uint256 amount);
    event TokenRuleSet(address indexed token, bool registered, uint128 limit, uint64 window);
    event SignersReplaced(address[] signers, uint256 threshold);
    event GuardianSet(address indexed guardian, bool allowed);

    error TokenNotRegistered(address token);
    error ZeroAmount();
    error ZeroWallet();
    error ZeroRecipient();
    error BadBatchSize(uint256 count, uint256 max);
    error SignatureCountMismatch(uint256 withdrawals, uint256 userSignatures);
    error TooFewNodeSignatures(uint256 count, uint256 threshold);
    error InvalidSignature();
    error NotASigner(address recovered);
    error NodeSignaturesUnsorted(uint256 index);
    error WithdrawalExpired(bytes32 id, uint64 deadline);
    error AlreadyPaid(bytes32 id);
    error NotTheUser(bytes32 id, address recovered);
    error WindowLimitExceeded(address token, uint256 amount, uint256 remaining);
    error NotGuardian(address caller);
    error BadSigners(uint256 count, uint256 threshold);
    error SignersUnsorted(uint256 index);
    error BadTokenRule(address token);
    error RenounceDisabled();

    constructor(address initialOwner, address[] memory signers_, uint256 threshold_, address[] memory guardians)
        EIP712("BaaS B&P network", "1")
        Ownable(initialOwner)
    {
        _replaceSigners(signers_, threshold_);
        for (uint256 i = 0; i < guardians.length; i++) {
            isGuardian[guardians[i]] = true;
            emit GuardianSet(guardians[i], true);
        }
    }

    // -- users ---------------------------------------------------------------------------------

    /// @notice Deposit `amount` of a registered `token` (approved to this vault first),
    /// crediting the ledger wallet `wallet`.
    function deposit(address token, uint256 amount, bytes16 wallet) external whenNotPaused nonReentrant {
        if (!tokenRules[token].registered) revert TokenNotRegistered(token);
        if (amount == 0) revert ZeroAmount();
        if (wallet == bytes16(0)) revert ZeroWallet();
        IERC20 asset = IERC20(token);
        uint256 before = asset.balanceOf(address(this));
        asset.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = asset.balanceOf(address(this)) - before;
        if (received == 0) revert ZeroAmount();
        emit Deposited(token, msg.sender, wallet, received);
    }

    /// @notice Pay the withdrawals `ws`, each with its user's signature (`userSigs[i]`), under
    /// at least `threshold` node signatures over the batch digest, sorted by signer address.
    function withdraw(Withdrawal[] calldata ws, bytes[] calldata userSigs, bytes[] calldata nodeSigs)
        external
        whenNotPaused
        nonReentrant
    {
        uint256 n = ws.length;
        if (n == 0 || n > WITHDRAWALS_PER_TX_MAX) revert BadBatchSize(n, WITHDRAWALS_PER_TX_MAX);
        if (userSigs.length != n) revert SignatureCountMismatch(n, userSigs.length);
        bytes32[] memory hashes = new bytes32[](n);
        for (uint256 i = 0; i < n; i++) {
            hashes[i] = _structHash(ws[i]);
        }
        _checkNodeSignatures(batchDigest(hashes), nodeSigs);
        for (uint256 i = 0; i < n; i++) {
            _pay(ws[i], hashes[i], userSigs[i]);
        }
    }

    // -- guardians and owner -------------------------------------------------------------------

    /// @notice Stop deposits and withdrawals at once; any one guardian may.
    function pause() external {
        if (!isGuardian[msg.sender]) revert NotGuardian(msg.sender);
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Register (or unregister) `token` with `limit` per `window` seconds.
    function setTokenRule(address token, bool registered, uint128 limit, uint64 window) external onlyOwner {
        if (token == address(0) || window == 0) revert BadTokenRule(token);
        tokenRules[token] = TokenRule(limit, window, registered);
        emit TokenRuleSet(token, registered, limit, window);
    }

    /// @notice Replace every signing node (rotation: the new list with the new key) and M.
    function replaceSigners(address[] calldata signers_, uint256 threshold_) external onlyOwner {
        _replaceSigners(signers_, threshold_);
    }

    function setGuardian(address guardian, bool allowed) external onlyOwner {
        isGuardian[guardian] = allowed;
        emit GuardianSet(guardian, allowed);
    }

    function renounceOwnership() public view override onlyOwner {
        revert RenounceDisabled();
    }

    // -- reads ---------------------------------------------------------------------------------

    function isPaid(bytes32 id) external view returns (bool) {
        uint256 key = uint256(id);
        return paidBits[key >> 8] & (1 << (key & 0xff)) != 0;
    }

    function signers() external view returns (address[] memory) {
        return signerList;
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /// @notice The digest a user signs for `w`.
    function withdrawalDigest(Withdrawal calldata w) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(w));
    }

    /// @notice The digest the nodes sign for a batch whose withdrawals hash to `hashes`.
    function batchDigest(bytes32[] memory hashes) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(BATCH_TYPEHASH, keccak256(abi.encodePacked(hashes)))));
    }

    // -- internals -----------------------------------------------------------------------------

    function _structHash(Withdrawal calldata w) private pure returns (bytes32) {
        return keccak256(abi.encode(WITHDRAWAL_TYPEHASH, w.id, w.token, w.amount, w.user, w.to, w.wallet, w.deadline));
    }

    function _recover(bytes32 digest, bytes calldata signature) private pure returns (address) {
        // tryRecover refuses malleable (high-s) signatures and bad lengths: one encoding each.
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecoverCalldata(digest, signature);
        if (err != ECDSA.RecoverError.NoError) revert InvalidSignature();
        return signer;
    }

    function _checkNodeSignatures(bytes32 digest, bytes[] calldata nodeSigs) private view {
        uint256 count = nodeSigs.length;
        uint256 needed = threshold;
        if (count < needed) revert TooFewNodeSignatures(count, needed);
        address last = address(0);
        for (uint256 i = 0; i < count; i++) {
            address signer = _recover(digest, nodeSigs[i]);
            if (!isSigner[signer]) revert NotASigner(signer);
            if (signer <= last) revert NodeSignaturesUnsorted(i);
            last = signer;
        }
    }

    function _pay(Withdrawal calldata w, bytes32 structHash, bytes calldata userSig) private {
        if (block.timestamp > w.deadline) revert WithdrawalExpired(w.id, w.deadline);
        uint256 key = uint256(w.id);
        uint256 bit = 1 << (key & 0xff);
        uint256 bits = paidBits[key >> 8];
        if (bits & bit != 0) revert AlreadyPaid(w.id);
        TokenRule memory rule = tokenRules[w.token];
        if (!rule.registered) revert TokenNotRegistered(w.token);
        if (w.amount == 0) revert ZeroAmount();
        if (w.to == address(0)) revert ZeroRecipient();
        address user = _recover(_hashTypedDataV4(structHash), userSig);
        if (user != w.user) revert NotTheUser(w.id, user);
        _spend(w.token, rule, w.amount);
        paidBits[key >> 8] = bits | bit;
        IERC20(w.token).safeTransfer(w.to, w.amount);
        emit Withdrawn(w.id, w.token, w.to, w.wallet, w.amount);
    }

    function _spend(address token, TokenRule memory rule, uint256 amount) private {
        WindowUse memory use = windowUse[token];
        uint64 start = uint64(block.timestamp - (block.timestamp % rule.window));
        uint256 spent = use.start == start ? use.spent : 0;
        if (amount > rule.limit || spent + amount > rule.limit) {
            revert WindowLimitExceeded(token, amount, spent >= rule.limit ? 0 : rule.limit - spent);
        }
        windowUse[token] = WindowUse(uint128(spent + amount), start);
    }

    function _replaceSigners(address[] memory signers_, uint256 threshold_) private {
        uint256 n = signers_.length;
        if (n == 0 || n > SIGNERS_MAX || threshold_ == 0 || threshold_ > n) revert BadSigners(n, threshold_);
        for (uint256 i = 0; i < signerList.length; i++) {
            isSigner[signerList[i]] = false;
        }
        address last = address(0);
        for (uint256 i = 0; i < n; i++) {
            if (signers_[i] <= last) revert SignersUnsorted(i);
            last = signers_[i];
            isSigner[last] = true;
        }
        signerList = signers_;
        threshold = threshold_;
        emit SignersReplaced(signers_, threshold_);
    }
}
