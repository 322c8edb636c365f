"""Partners, modes, users' wallets, signed links and debit approvals: the pure identity core.

See :mod:`business.identity.core` for the theory of operation and docs/threat-model.md for
what it protects against. Public surface:

* :mod:`business.identity.ids` -- every domain-separated id (operations, ledger ids, wallets,
  user references, ledger numbers per mode);
* :class:`IdentityMachine` -- the state machine (``partner.put``, ``wallet.link``,
  ``wallet.unlink``, ``code.issue``) and :func:`open_wallet_account`;
* :func:`check_scope` -- which accounts and assets an operation's proposer may touch, and what
  to open for it on first use (:mod:`business.identity.scope`);
* :func:`check_debits` -- the approval check the ledger-ops apply runs before an operation;
* :mod:`business.identity.eip712` -- the messages users sign;
* reads and the audit trail (:mod:`business.identity.views`).
"""

from business.identity.approvals import (
    CodeApproval,
    Debit,
    DebitRule,
    DebitRules,
    NoDebitRules,
    Operation,
    RuleClaim,
    SignedApproval,
    check_debits,
    debits_of,
    encode_approvals,
    operation_digest,
)
from business.identity.core import IdentityMachine, open_wallet_account, platform_account
from business.identity.ids import Mode
from business.identity.model import (
    BRIDGE_ROLES,
    DEFAULT_ROLES,
    IDENTITY_FEATURE_VERSION,
    ONBOARDING_ROLES,
    PAYMENT_ROLES,
    Actor,
    ActorKind,
    ApprovalResult,
    AssetRef,
    CodeIssueEntry,
    CodeResult,
    IdentityConfig,
    LinkEntry,
    LinkResult,
    Owner,
    OwnerKind,
    PartnerPut,
    PartnerResult,
    PartnerStatus,
    Role,
    RoleAccount,
    ScopeResult,
    UnlinkEntry,
)
from business.identity.scope import PLATFORM, Proposer, Scope, check_scope
from business.identity.views import AuditEntry, get_owner, get_partner, linked_wallet, list_audit

__all__ = [
    "BRIDGE_ROLES",
    "DEFAULT_ROLES",
    "IDENTITY_FEATURE_VERSION",
    "ONBOARDING_ROLES",
    "PAYMENT_ROLES",
    "PLATFORM",
    "Actor",
    "ActorKind",
    "ApprovalResult",
    "AssetRef",
    "AuditEntry",
    "CodeApproval",
    "CodeIssueEntry",
    "CodeResult",
    "Debit",
    "DebitRule",
    "DebitRules",
    "IdentityConfig",
    "IdentityMachine",
    "LinkEntry",
    "LinkResult",
    "Mode",
    "NoDebitRules",
    "Operation",
    "Owner",
    "OwnerKind",
    "PartnerPut",
    "PartnerResult",
    "PartnerStatus",
    "Proposer",
    "Role",
    "RoleAccount",
    "RuleClaim",
    "Scope",
    "ScopeResult",
    "SignedApproval",
    "UnlinkEntry",
    "check_debits",
    "check_scope",
    "debits_of",
    "encode_approvals",
    "get_owner",
    "get_partner",
    "linked_wallet",
    "list_audit",
    "open_wallet_account",
    "operation_digest",
    "platform_account",
]
