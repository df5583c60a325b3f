"""Who is calling: the result of authentication, and the role checks made on it."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.errors import PermissionDenied


class Role(enum.StrEnum):
    """Roles a token may grant (read from the configured roles claim)."""

    BUYER = "buyer"
    VENDOR = "vendor"
    COMPLIANCE = "compliance"
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
