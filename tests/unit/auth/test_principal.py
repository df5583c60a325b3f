"""Role checks on a principal."""

from __future__ import annotations

import pytest

from broker.auth.principal import Principal, Role, is_valid_tenant, require_role
from broker.errors import PermissionDenied


def principal(*roles: Role) -> Principal:
    return Principal("bank", "svc", frozenset(roles), "https://idp", 0.0)


def test_require_role_accepts_any_of_the_roles() -> None:
    require_role(principal(Role.BUYER), Role.ADMIN, Role.BUYER)


def test_require_role_refuses_and_names_the_roles() -> None:
    with pytest.raises(PermissionDenied, match="needs the vendor or admin role"):
        require_role(principal(Role.BUYER), Role.VENDOR, Role.ADMIN)


@pytest.mark.parametrize(
    ("tenant", "valid"),
    [
        ("bank", True),
        ("a.b_c-9", True),
        ("x" * 128, True),
        ("", False),
        ("x" * 129, False),
        ("a b", False),
        ("a/b", False),
        ("bank\n", False),
        ("bänk", False),
        (7, False),
    ],
)
def test_tenant_charset(tenant: object, valid: bool) -> None:
    assert is_valid_tenant(tenant) is valid
