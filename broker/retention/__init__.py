"""Retention: encrypted retained payloads, a versioned keyring, and scheduled crypto-shredding.

Start at :mod:`broker.retention.setup` (assembly), :mod:`broker.retention.records` (the
``retain`` call the call path makes), :mod:`broker.retention.keyring` (the key hierarchy) and
:mod:`broker.retention.shred` (what deletion guarantees on SQLite and PostgreSQL).
"""
