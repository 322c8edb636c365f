// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title AnchorRegistry: the on-chain commitments of the BaaS B&P record log.
/// @notice Each anchor commits (tree size, RFC 9162 Merkle root) of the record log under a batch
/// id. Batch ids are consecutive from 1, tree sizes strictly grow, and a root is anchored at most
/// once, so the sequence of anchors read from this contract is the log's append-only history.
/// Only submitters allowed by the owner may anchor.
contract AnchorRegistry {
    struct Anchor {
        uint64 treeSize;
        bytes32 root;
        uint64 blockNumber;
    }

    address public immutable owner;
    mapping(address => bool) public submitters;
    /// @notice The batch id the next anchor must carry (starts at 1).
    uint64 public nextBatchId = 1;
    mapping(uint64 => Anchor) private anchors;
    /// @notice root => its batch id (0: never anchored).
    mapping(bytes32 => uint64) public batchOfRoot;

    event Anchored(uint64 indexed batchId, bytes32 indexed root, uint64 treeSize);
    event SubmitterChanged(address indexed submitter, bool allowed);

    error NotOwner(address caller);
    error NotSubmitter(address caller);
    error BatchOutOfOrder(uint64 expected, uint64 got);
    error RootAlreadyAnchored(bytes32 root, uint64 batchId);
    error TreeNotGrown(uint64 lastTreeSize, uint64 treeSize);
    error ZeroRoot();

    constructor(address[] memory initialSubmitters) {
        owner = msg.sender;
        for (uint256 i = 0; i < initialSubmitters.length; i++) {
            submitters[initialSubmitters[i]] = true;
            emit SubmitterChanged(initialSubmitters[i], true);
        }
    }

    function setSubmitter(address submitter, bool allowed) external {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        submitters[submitter] = allowed;
        emit SubmitterChanged(submitter, allowed);
    }

    /// @notice Commit the log's root at `treeSize` leaves as batch `batchId`.
    function anchor(uint64 batchId, uint64 treeSize, bytes32 root) external {
        if (!submitters[msg.sender]) revert NotSubmitter(msg.sender);
        if (batchId != nextBatchId) revert BatchOutOfOrder(nextBatchId, batchId);
        if (root == bytes32(0)) revert ZeroRoot();
        uint64 seen = batchOfRoot[root];
        if (seen != 0) revert RootAlreadyAnchored(root, seen);
        uint64 lastSize = batchId == 1 ? 0 : anchors[batchId - 1].treeSize;
        if (treeSize <= lastSize) revert TreeNotGrown(lastSize, treeSize);
        anchors[batchId] = Anchor(treeSize, root, uint64(block.number));
        batchOfRoot[root] = batchId;
        nextBatchId = batchId + 1;
        emit Anchored(batchId, root, treeSize);
    }

    /// @notice The anchor of `batchId` (all zero when there is none).
    function anchorOf(uint64 batchId)
        external
        view
        returns (uint64 treeSize, bytes32 root, uint64 blockNumber)
    {
        Anchor storage a = anchors[batchId];
        return (a.treeSize, a.root, a.blockNumber);
    }
}
