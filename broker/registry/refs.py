"""Model references (``vendor/name@version``) and the identifier syntax they are made of.

The character sets keep references unambiguous without quoting: a vendor never contains ``/``
or ``@``, a name never contains ``@``, so ``vendor/name@version`` splits one way only. Vendor is
the tenant charset of the token issuer; names are lowercase so that two models cannot differ only
by case; versions allow ``+`` for PEP 440 / SemVer build metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from broker.errors import InvalidArgument

VENDOR_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,128}")
NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
VERSION_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")

_MAX_REF_LENGTH: Final = 128 + 1 + 63 + 1 + 64
_SHOWN_CHARS: Final = 80


def check_vendor(value: str, field: str = "vendor") -> str:
    """Return ``value`` if it is a valid vendor (tenant) identifier, else InvalidArgument."""
    if not VENDOR_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1 to 128 characters of letters, digits, '.', '_' or '-'"
        )
    return value


def check_name(value: str, field: str = "name") -> str:
    """Return ``value`` if it is a valid model name, else InvalidArgument."""
    if not NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1 to 63 characters of lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def check_version(value: str, field: str = "version") -> str:
    """Return ``value`` if it is a valid version string, else InvalidArgument."""
    if not VERSION_RE.fullmatch(value):
        raise InvalidArgument(
            f"{field} must be 1 to 64 characters of letters, digits, '.', '_', '+' or '-', "
            "starting with a letter or digit (for example 1.2.0)"
        )
    return value


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A parsed model reference; ``version`` is None for "the newest listed version"."""

    vendor: str
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str, *, field: str = "ref") -> ModelRef:
        """Parse ``vendor/name@version`` or ``vendor/name``.

        Raises InvalidArgument saying what shape is expected; the offending text is quoted only
        up to a short prefix, so a caller cannot make the broker log or echo large inputs.
        """
        expected = f'{field} must look like "vendor/name@version" or "vendor/name"'
        if not text:
            raise InvalidArgument(f"{field} is empty: {expected[len(field) + 1 :]}")
        if len(text) > _MAX_REF_LENGTH:
            raise InvalidArgument(f"{field} is longer than {_MAX_REF_LENGTH} characters")
        path, at, version = text.partition("@")
        vendor, slash, name = path.partition("/")
        if not slash or not vendor or not name or (at and not version):
            raise InvalidArgument(f"{expected}, got {_shown(text)}")
        check_vendor(vendor, f"{field} vendor")
        check_name(name, f"{field} model name")
        if at:
            check_version(version, f"{field} version")
        return cls(vendor=vendor, name=name, version=version if at else None)

    def require_version(self, field: str = "ref") -> str:
        """The version, or InvalidArgument for calls that must name one exactly."""
        if self.version is None:
            raise InvalidArgument(f'{field} must name a version: "{self}@<version>"')
        return self.version

    def __str__(self) -> str:
        base = f"{self.vendor}/{self.name}"
        return base if self.version is None else f"{base}@{self.version}"


def not_found(ref: ModelRef | str) -> str:
    """The one NotFound message for a model, whether it is absent or hidden from the caller.

    Using the same text in both cases keeps a vendor from learning that another vendor's model
    exists by comparing error messages.
    """
    return f"model {ref} not found"


def _shown(text: str) -> str:
    shown = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return repr(shown)
