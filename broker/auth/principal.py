"""Who is calling: the result of authentication, and the role checks made on it."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.errors import PermissionDenied

#: What a tenant id may look like. Tenants end up in log fields, database keys and key ids, so
#: the charset is narrow on purpose: no separators, no whitespace, nothing to escape.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_valid_tenant(value: object) -> bool:
    """True if ``value`` is a string that matches :data:`TENANT_PATTERN` in full."""
    return isinstance(value, str) and TENANT_PATTERN.fullmatch(value) is not None


class Role(enum.StrEnum):
    """Roles a token may grant (read from the configured roles claim)."""

    BUYER = "buyer"
    VENDOR = "vendor"
    COMPLIANCE = "compliance"
    AUDITOR = "auditor"  # reads the audit log of every tenant (compliance sees only its own)
    POLICY_ADMIN = "policy-admin"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``tenant`` is the organisation (a buyer company or a vendor), ``subject`` the service or
    person within it. Unknown role strings in a token are ignored, never guessed at.
    """

    tenant: str
    subject: str
    roles: frozenset[Role]
    issuer: str
    expires_at: float
    claims: Mapping[str, Any] = field(default_factory=dict)

    def has_role(self, *roles: Role) -> bool:
        """True if the principal holds any of ``roles``."""
        return any(role in self.roles for role in roles)


def require_role(principal: Principal, *roles: Role) -> None:
    """Raise PermissionDenied unless the principal holds one of ``roles``."""
    if not principal.has_role(*roles):
        wanted = " or ".join(role.value for role in roles)
        raise PermissionDenied(f"this call needs the {wanted} role")
