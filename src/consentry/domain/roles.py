"""Who may do what (issue 6): three roles, each a superset of the one below.

- viewer: read everything (profiles, consent, quarantine, services, deliveries, reports).
- operator: also change consent, quarantine, services and deliveries.
- admin: also manage operators, API keys, webhooks and settings.
"""

from __future__ import annotations

from enum import StrEnum

from consentry.domain.errors import ConsentryError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    READ = "read"  # anything but secrets
    WRITE = "write"  # consent, quarantine, services, deliveries, privacy
    ADMIN = "admin"  # operators, API keys, webhooks


_GRANTS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: frozenset({Permission.READ}),
    Role.OPERATOR: frozenset({Permission.READ, Permission.WRITE}),
    Role.ADMIN: frozenset({Permission.READ, Permission.WRITE, Permission.ADMIN}),
}


def can(role: Role | str, permission: Permission) -> bool:
    return permission in _GRANTS[Role(role)]


def parse_role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise ConsentryError(f"unknown role {value!r}: expected admin, operator or viewer") \
            from None
