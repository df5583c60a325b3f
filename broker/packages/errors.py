"""What can go wrong with a model package, as members of the broker's error tree.

::

    PackageError (mixin)
    ├── InvalidPackage       INVALID_ARGUMENT     bad manifest, unsafe archive member, over a cap
    ├── PackageNotFound      NOT_FOUND            no stored package has this digest
    ├── PackageTampered      FAILED_PRECONDITION  stored files no longer match their digest
    └── PackageNotPrepared   FAILED_PRECONDITION  its environment was never built (or failed)
        └── EnvironmentTampered                   its environment no longer matches its manifest

A tampered package is refused rather than repaired: the broker cannot know which bytes the
vendor meant, and the operator must find out who changed them.
"""

from __future__ import annotations

from typing import ClassVar

from broker.errors import FailedPrecondition, InvalidArgument, NotFound


class PackageError(Exception):
    """Marker base of every package error."""


class InvalidPackage(PackageError, InvalidArgument):
    """The package (manifest, archive or folder) is not acceptable; the message says why."""


class PackageNotFound(PackageError, NotFound):
    """No package with this digest is stored on this node."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"no model package {digest} is stored on this broker")
        self.digest = digest


class PackageTampered(PackageError, FailedPrecondition):
    """The stored files hash to another digest than the one they are stored under."""

    def __init__(self, digest: str, actual: str) -> None:
        super().__init__(
            f"model package {digest} was modified on disk (its files now hash to {actual}); "
            "refusing to load it: re-add the vendor's original package",
            log_reason=f"expected {digest}, found {actual}",
        )
        self.digest = digest
        self.actual = actual


class PackageNotPrepared(PackageError, FailedPrecondition):
    """The package declares requirements or a prepare step, and its environment is not usable.

    ``why`` completes "model package <digest> ..." (default: it was never built); the cure is
    always the same command, which is why ``prepare`` (without ``--force``) rebuilds on it.
    """

    NEVER_BUILT: ClassVar[str] = "has no prepared environment"

    def __init__(self, digest: str, why: str = NEVER_BUILT, *, when: str = "first") -> None:
        super().__init__(
            f"model package {digest} {why}: run `broker packages prepare {digest}` {when}"
        )
        self.digest = digest
        self.why = why


class EnvironmentTampered(PackageNotPrepared):
    """A prepared environment differs from the digest manifest recorded when it was built.

    ``path`` is relative to the environment (no host paths reach the caller); ``change`` says
    how it differs ("content changed", "is missing", "was added", ...).
    """

    def __init__(self, digest: str, path: str, change: str) -> None:
        super().__init__(
            digest,
            f"has a prepared environment that was modified on disk ({path!r} {change}); "
            "refusing to load it",
            when="again",
        )
        self.path = path
        self.change = change
