"""``with obj:`` closes ``obj``: the one context-manager shape shared by the broker's streams.

Chat streams (vendor's, sandbox worker's, a whole answer as one chunk) and the client hold a
resource that ``close`` releases; each used to repeat the same ``__enter__``/``__exit__``.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class ClosedOnExit:
    """Mixin for classes with a ``close()``: leaving a ``with`` block calls it, come what may."""

    def close(self) -> None:
        """Release what the object holds; idempotent in every subclass."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
