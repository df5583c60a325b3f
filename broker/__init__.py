"""Data-sandboxed model invocation broker.

Buyers call vendors' models through this broker; field-level policies decide what each model
may see, and every call is audited. See README.md for the tour and DESIGN notes.
"""

__version__ = "0.1.0"
