"""The sealing shared by console sessions and pending sign-ins: bound to its id and its kind."""

from __future__ import annotations

from broker.console import sealed_rows

SESSION = b"broker console session token v1"
LOGIN = b"broker console oidc login v1"


def test_a_sealed_value_opens_with_its_own_id_and_kind_only() -> None:
    row_id, other = sealed_rows.new_id(), sealed_rows.new_id()
    sealed = sealed_rows.seal(row_id, SESSION, b"bearer-token")

    assert b"bearer-token" not in sealed
    assert sealed_rows.unseal(row_id, SESSION, sealed) == b"bearer-token"
    assert sealed_rows.unseal(other, SESSION, sealed) is None  # moved to another row
    assert sealed_rows.unseal(row_id, LOGIN, sealed) is None  # read as another kind of row


def test_a_flipped_bit_does_not_open() -> None:
    row_id = sealed_rows.new_id()
    sealed = bytearray(sealed_rows.seal(row_id, SESSION, b"bearer-token"))
    sealed[-1] ^= 1
    assert sealed_rows.unseal(row_id, SESSION, bytes(sealed)) is None


def test_the_key_is_the_hash_of_the_id_not_the_id() -> None:
    row_id = sealed_rows.new_id()
    assert sealed_rows.id_hash(row_id) != row_id.encode()
    assert len(sealed_rows.id_hash(row_id)) == 32
    assert sealed_rows.id_hash(row_id) == sealed_rows.id_hash(row_id)


def test_ids_that_cannot_be_ours_are_refused_before_hashing() -> None:
    assert sealed_rows.plausible_id(sealed_rows.new_id())
    assert not sealed_rows.plausible_id("")
    assert not sealed_rows.plausible_id("é" * 10)
    assert not sealed_rows.plausible_id("a" * (sealed_rows.MAX_ID_LENGTH + 1))
