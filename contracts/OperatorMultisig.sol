// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title OperatorMultisig: M-of-N approval of the operators before a call is made.
/// @notice The vault's owner is an OpenZeppelin TimelockController whose only proposer and
/// canceller is this contract, so every owner action (signer rotation, limits, token
/// registration, unpausing) needs `threshold` of the operators' keys *and* the timelock's delay.
/// It is deliberately minimal (approvals are transactions, not off-chain signatures; no nonce
/// scheme, no modules) so it can be read in one sitting; a deployment may use a Safe instead,
/// the timelock does not care which multisig proposes.
///
/// An operator `propose`s a call (that counts as its approval); others `approve` it; the
/// approval that reaches `threshold` makes the call at once. A call that reverts reverts the
/// approval too, so the proposal stays open and can be approved again later. Operators change
/// only by a proposal that calls `replaceOperators` on this contract; that bumps `epoch`, and a
/// proposal made under an older operator set can no longer be approved.
contract OperatorMultisig {
    uint256 public constant OPERATORS_MAX = 16;

    struct Proposal {
        address target;
        uint64 epoch;
        uint32 approvals;
        bool executed;
        uint256 value;
        bytes data;
    }

    address[] private operatorList;
    mapping(address => bool) public isOperator;
    uint256 public threshold;
    /// @notice Bumped by every `replaceOperators`: proposals of an older epoch are dead.
    uint64 public epoch;
    uint256 public proposalCount;
    mapping(uint256 => Proposal) private proposals;
    mapping(uint256 => mapping(address => bool)) public approved;

    event Proposed(uint256 indexed id, address indexed proposer, address target, bytes data);
    event Approved(uint256 indexed id, address indexed operator, uint32 approvals);
    event Executed(uint256 indexed id);
    event OperatorsReplaced(address[] operators, uint256 threshold, uint64 epoch);

    error NotOperator(address caller);
    error NotSelf(address caller);
    error BadThreshold(uint256 threshold, uint256 operators);
    error OperatorsUnsorted(uint256 index);
    error UnknownProposal(uint256 id);
    error AlreadyApproved(uint256 id, address operator);
    error AlreadyExecuted(uint256 id);
    error StaleProposal(uint256 id, uint64 proposalEpoch, uint64 currentEpoch);
    error CallFailed(uint256 id, bytes reason);

    modifier onlyOperator() {
        if (!isOperator[msg.sender]) revert NotOperator(msg.sender);
        _;
    }

    constructor(address[] memory operators, uint256 threshold_) {
        _setOperators(operators, threshold_);
    }

    /// @notice Propose `target.call{value}(data)`; the proposer's approval is counted.
    function propose(address target, uint256 value, bytes calldata data)
        external
        onlyOperator
        returns (uint256 id)
    {
        id = ++proposalCount;
        Proposal storage p = proposals[id];
        p.target = target;
        p.epoch = epoch;
        p.value = value;
        p.data = data;
        emit Proposed(id, msg.sender, target, data);
        _approve(id, p);
    }

    function approve(uint256 id) external onlyOperator {
        Proposal storage p = proposals[id];
        if (p.target == address(0)) revert UnknownProposal(id);
        _approve(id, p);
    }

    /// @notice Replace every operator and the threshold; only through an executed proposal.
    function replaceOperators(address[] calldata operators, uint256 threshold_) external {
        if (msg.sender != address(this)) revert NotSelf(msg.sender);
        _setOperators(operators, threshold_);
    }

    function operators() external view returns (address[] memory) {
        return operatorList;
    }

    function proposal(uint256 id)
        external
        view
        returns (address target, uint256 value, bytes memory data, uint32 approvals, bool executed)
    {
        Proposal storage p = proposals[id];
        return (p.target, p.value, p.data, p.approvals, p.executed);
    }

    receive() external payable {}

    function _approve(uint256 id, Proposal storage p) private {
        if (p.executed) revert AlreadyExecuted(id);
        if (p.epoch != epoch) revert StaleProposal(id, p.epoch, epoch);
        if (approved[id][msg.sender]) revert AlreadyApproved(id, msg.sender);
        approved[id][msg.sender] = true;
        uint32 count = p.approvals + 1;
        p.approvals = count;
        emit Approved(id, msg.sender, count);
        if (count < threshold) return;
        p.executed = true;
        (bool ok, bytes memory reason) = p.target.call{value: p.value}(p.data);
        if (!ok) revert CallFailed(id, reason);
        emit Executed(id);
    }

    function _setOperators(address[] memory operators_, uint256 threshold_) private {
        uint256 n = operators_.length;
        if (n == 0 || n > OPERATORS_MAX || threshold_ == 0 || threshold_ > n) {
            revert BadThreshold(threshold_, n);
        }
        for (uint256 i = 0; i < operatorList.length; i++) {
            isOperator[operatorList[i]] = false;
        }
        // Strictly increasing: no duplicate can inflate the count, no zero address.
        address last = address(0);
        for (uint256 i = 0; i < n; i++) {
            if (operators_[i] <= last) revert OperatorsUnsorted(i);
            last = operators_[i];
            isOperator[last] = true;
        }
        operatorList = operators_;
        threshold = threshold_;
        epoch += 1;
        emit OperatorsReplaced(operators_, threshold_, epoch);
    }
}
