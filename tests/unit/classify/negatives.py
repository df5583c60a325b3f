"""Hard negatives: strings that look like an entity and are not one.

Each maker returns one string that no detector may report. They are what breaks a detector that
only matches shapes: check digits that are off by one, never-issued numbers, and the everyday
numbers (order ids, timestamps, versions, UUIDs, ISBNs, dates, prices) that share their digits.
"""

from __future__ import annotations

import base64
import json
import random
import string
import uuid
from collections.abc import Callable

from broker.classify.detectors.checksums import cn_id_check_char, luhn_ok

from .generators import cn_id_body, format_card, format_iban, valid_card, valid_iban


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def bad_luhn_card(rng: random.Random) -> str:
    """A card with a real prefix and length whose last digit breaks Luhn."""
    digits = valid_card(rng)
    wrong = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
    assert not luhn_ok(wrong)
    return format_card(rng, wrong)


def bad_iban(rng: random.Random) -> str:
    """An IBAN whose check digits are wrong (MOD 97 gives something other than 1)."""
    good = valid_iban(rng)
    check = (int(good[2:4]) + rng.randint(1, 50)) % 97
    return format_iban(rng, good[:2] + f"{max(check, 2):02d}" + good[4:])


def bad_cn_id(rng: random.Random) -> str:
    """A resident ID with a wrong check character, or an impossible birth date."""
    body = cn_id_body(rng)
    if rng.random() < 0.25:
        return body[:10] + "0230" + body[14:] + cn_id_check_char(body[:10] + "0230" + body[14:])
    right = cn_id_check_char(body)
    return body + rng.choice([c for c in "0123456789X" if c != right])


def bad_ssn(rng: random.Random) -> str:
    """A never-issued SSN: area 000, 666 or 9xx, group 00, or serial 0000."""
    area, group, serial = rng.randint(1, 665), rng.randint(1, 99), rng.randint(1, 9999)
    kind = rng.randrange(5)
    if kind == 0:
        area = 0
    elif kind == 1:
        area = 666
    elif kind == 2:
        area = rng.randint(900, 999)
    elif kind == 3:
        group = 0
    else:
        serial = 0
    return f"{area:03d}-{group:02d}-{serial:04d}"


def order_number(rng: random.Random) -> str:
    return rng.choice([
        f"Order #{_digits(rng, 9)}", f"ORD-{rng.randint(2019, 2025)}-{_digits(rng, 6)}",
        f"SO{_digits(rng, 8)}", f"订单号 {rng.randint(2, 9)}{_digits(rng, 13)}",
        f"invoice INV/{rng.randint(2019, 2025)}/{_digits(rng, 5)}",
        f"tracking 1Z{_digits(rng, 16)}",
    ])  # fmt: skip


def timestamp(rng: random.Random) -> str:
    secs = rng.randint(1_500_000_000, 1_800_000_000)
    return rng.choice([
        f"2023-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z",
        f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:"
        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{_digits(rng, 3)}",
        str(secs), f"{secs}{_digits(rng, 3)}", f"20231108{_digits(rng, 6)}",
    ])  # fmt: skip


def version(rng: random.Random) -> str:
    a, b, c = rng.randint(0, 20), rng.randint(0, 40), rng.randint(0, 200)
    return rng.choice([
        f"v{a}.{b}.{c}", f"{a}.{b}.{c}-rc.{rng.randint(1, 9)}", f"Python {a}.{b}.{c}",
        f"build {a}.{b}.{c}.{rng.randint(1, 9999)}.{rng.randint(1, 99)}",
        f"OID 1.3.6.1.4.1.{rng.randint(1, 99999)}",
    ])  # fmt: skip


def a_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def isbn(rng: random.Random) -> str:
    body = "978" + _digits(rng, 9)
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
    full = body + str(check)
    return rng.choice([full, f"ISBN {full[:3]}-{full[3]}-{full[4:7]}-{full[7:12]}-{full[12]}"])


def a_date(rng: random.Random) -> str:
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice([
        f"{d:02d}/{m:02d}/{y}", f"{d:02d}.{m:02d}.{y}", f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}",
        f"{y}{m:02d}{d:02d}", f"{y}/{m:02d}/{d:02d} - {y + 1}/{m:02d}/{d:02d}",
    ])  # fmt: skip


def price(rng: random.Random) -> str:
    units, cents = rng.randint(1, 9_999_999), rng.randint(0, 99)
    return rng.choice([
        f"${units:,}.{cents:02d}", f"¥{units:,}.00",
        f"€ {units:,}".replace(",", ".") + f",{cents:02d}",
        f"{units} RMB", f"total {units}.{cents:02d} USD",
    ])  # fmt: skip


def digest(rng: random.Random) -> str:
    return rng.choice(
        [f"commit {rng.getrandbits(160):040x}", f"sha256:{rng.getrandbits(256):064x}"]
    )


def almost_secret(rng: random.Random) -> str:
    """Public keys, publishable keys, short prefixes, and dotted base64 without a JWT header."""
    alnum = string.ascii_letters + string.digits
    body = "".join(rng.choice(alnum) for _ in range(64))
    header = base64.urlsafe_b64encode(json.dumps({"typ": "JWT"}).encode()).rstrip(b"=").decode()
    return rng.choice([
        f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----",
        f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----",
        "pk_live_" + body[:24], "AKIA" + body[:10].upper(), "ghp_" + body[:20],
        f"{header}.{body[:20]}.{body[20:40]}", f"{body[:10]}.{body[10:30]}.{body[30:50]}",
        "xoxb", "AIza" + body[:20],
    ])  # fmt: skip


def almost_contact(rng: random.Random) -> str:
    """Handles, local hosts, times and MAC addresses, room and zip numbers."""
    return rng.choice([
        f"@user{rng.randint(1, 999)}", "admin@localhost", "name at example dot com",
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        ":".join(f"{rng.randint(0, 255):02X}" for _ in range(6)), "std::vector<int>",
        f"Room {rng.randint(100, 2999)}, Bldg {rng.randint(1, 20)}", f"zip {_digits(rng, 5)}",
        f"{rng.randint(256, 999)}." + ".".join(str(rng.randint(0, 255)) for _ in range(3)),
        f"pi is 3.{_digits(rng, 12)}",
    ])  # fmt: skip


NEGATIVE_MAKERS: tuple[Callable[[random.Random], str], ...] = (
    bad_luhn_card, bad_iban, bad_cn_id, bad_ssn, order_number, timestamp, version, a_uuid, isbn,
    a_date, price, digest, almost_secret, almost_contact,
)  # fmt: skip
