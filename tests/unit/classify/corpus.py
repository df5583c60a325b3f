# ruff: noqa: RUF001
# (Chinese sentences use full-width punctuation on purpose.)
"""A labelled corpus for the detectors, generated deterministically from a seed.

Positives are valid by construction (check digits computed, not copied) and vary in format:
grouping, separators, country, case. Each is embedded in an English or Chinese sentence, and about
a third of them also carry a hard negative as a distractor, so the expected spans are exactly the
positive's. Hard negatives (``negatives.py``) are the strings that break naive detectors: card
numbers with a wrong Luhn digit, IBANs with wrong check digits, resident IDs with a wrong check
character, never-issued SSNs, order numbers, timestamps, versions, UUIDs, ISBNs, dates, prices.

The benchmark imports ``build_corpus`` too, so keep it free of pytest.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable

from broker.classify.detectors import Span
from broker.classify.detectors.checksums import cn_id_check_char
from broker.classify.metrics import LabelledText

from .generators import chars, cn_id_body, digits, format_card, format_iban, valid_card, valid_iban
from .negatives import NEGATIVE_MAKERS

Maker = Callable[[random.Random], str]

_EN = (
    "Please reach me at {x} tomorrow.",
    "My {what} is {x}, keep it safe.",
    "{x}",
    "Details: {x}; thanks!",
    "Customer wrote (see ticket 4821): {x}",
    "Send it to {x}, please.",
    "\n{x}\n",
)
_ZH = (
    "我的{what}是{x}，请保密。",
    "请联系{x}谢谢",
    "客户信息：{x}。",
    "{x}（已核实）",
    "备注:{x} 明天处理",
)
_ALNUM = string.ascii_letters + string.digits


def make_email(rng: random.Random) -> str:
    first = rng.choice(["john", "mei", "li.wei", "anna-maria", "o'brien", "zhang_san", "x"])
    local = first.replace("'", "") + rng.choice(["", ".smith", "+news", str(rng.randint(1, 999))])
    domain = rng.choice(["example.com", "mail.example.co.uk", "qq.com", "corp.example.cn",
                         "startup.io", "uni-berlin.de", "163.com"])  # fmt: skip
    return f"{local}@{domain}"


def make_phone(rng: random.Random) -> str:
    area, exch, line = rng.randint(201, 989), rng.randint(200, 999), digits(rng, 4)
    cn = f"1{rng.choice('3456789')}{digits(rng, 9)}"
    fr = [digits(rng, 2) for _ in range(4)]
    de_area, de_sub = f"{rng.randint(30, 9999)}", digits(rng, rng.randint(6, 8))
    return rng.choice([
        f"({area}) {exch}-{line}", f"{area}-{exch}-{line}", f"{area}.{exch}.{line}",
        f"+1 {area} {exch} {line}", f"+1-{area}-{exch}-{line}",
        f"020 {rng.randint(3000, 8999)} {digits(rng, 4)}",
        f"07{digits(rng, 3)} {digits(rng, 6)}",
        f"+44 20 {rng.randint(3000, 8999)} {digits(rng, 4)}",
        f"+44 7{digits(rng, 3)} {digits(rng, 6)}",
        f"0{de_area} {de_sub}", f"+49 {de_area} {de_sub}", f"0{de_area}/{de_sub}",
        f"0{rng.randint(1, 9)} " + " ".join(fr), f"0{rng.choice('67')}." + ".".join(fr),
        f"+33 {rng.randint(1, 9)} " + " ".join(fr),
        cn, f"{cn[:3]} {cn[3:7]} {cn[7:]}", f"{cn[:3]}-{cn[3:7]}-{cn[7:]}", f"+86 {cn}",
        f"+86-{cn[:3]}-{cn[3:7]}-{cn[7:]}",
    ])  # fmt: skip


def make_card(rng: random.Random) -> str:
    return format_card(rng, valid_card(rng))


def make_iban(rng: random.Random) -> str:
    return format_iban(rng, valid_iban(rng))


def make_cn_id(rng: random.Random) -> str:
    body = cn_id_body(rng)
    check = cn_id_check_char(body)
    return body + (check.lower() if check == "X" and rng.random() < 0.2 else check)


def make_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    sep = "-" if rng.random() < 0.85 else " "
    return f"{area:03d}{sep}{rng.randint(1, 99):02d}{sep}{rng.randint(1, 9999):04d}"


def make_ip(rng: random.Random) -> str:
    choice = rng.random()
    if choice < 0.5:
        return ".".join(str(rng.randint(0, 255)) for _ in range(4))
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if choice < 0.7:
        return ":".join(groups)
    if choice < 0.9:
        return f"2001:db8::{groups[0]}:{groups[1]}"
    return f"fe80::{groups[2]}"


def make_private_key(rng: random.Random) -> str:
    kind = rng.choice(["RSA ", "EC ", "OPENSSH ", "", "ENCRYPTED "])
    body = "\n".join(chars(rng, _ALNUM + "+/", 64) for _ in range(rng.randint(3, 8)))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(rng: random.Random) -> str:
    header = {"alg": rng.choice(["HS256", "RS256", "ES256", "EdDSA"]), "typ": "JWT"}
    claims = {
        "sub": f"user-{rng.randint(1, 10**6)}",
        "iat": rng.randint(1_600_000_000, 1_800_000_000),
    }
    signature = _b64url(rng.randbytes(rng.choice([32, 64, 256])))
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                     signature])  # fmt: skip


def make_cloud_key(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return rng.choice(["AKIA", "ASIA"]) + chars(rng, string.ascii_uppercase + "234567", 16)
    return "AIza" + chars(rng, _ALNUM + "_-", 35)


def make_api_token(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"gh{rng.choice('pousr')}_" + chars(rng, _ALNUM, 36)
    if kind == 1:
        return f"github_pat_{chars(rng, _ALNUM, 22)}_{chars(rng, _ALNUM, 59)}"
    if kind == 2:
        return f"xox{rng.choice('abprs')}-{digits(rng, 12)}-{digits(rng, 13)}-" + chars(
            rng, _ALNUM, 24
        )
    return f"{rng.choice(['sk', 'rk'])}_live_" + chars(rng, _ALNUM, rng.choice([24, 99]))


POSITIVE_MAKERS: dict[str, tuple[str, Maker]] = {
    "pii.email": ("email", make_email),
    "pii.phone": ("phone", make_phone),
    "pci.card": ("card", make_card),
    "finance.iban": ("IBAN", make_iban),
    "pii.national_id.cn": ("ID number", make_cn_id),
    "pii.national_id.us_ssn": ("SSN", make_ssn),
    "net.ip": ("address", make_ip),
    "secret.private_key": ("key", make_private_key),
    "secret.jwt": ("token", make_jwt),
    "secret.cloud_key": ("key", make_cloud_key),
    "secret.api_token": ("token", make_api_token),
}


def _embed(rng: random.Random, what: str, value: str) -> tuple[str, int]:
    """A sentence holding ``value``, and where ``value`` starts in it."""
    template = rng.choice(_ZH if rng.random() < 0.4 else _EN).replace("{what}", what)
    if rng.random() < 0.33:
        distractor = NEGATIVE_MAKERS[rng.randrange(len(NEGATIVE_MAKERS))](rng)
        template = f"Ref {distractor} | " + template if rng.random() < 0.5 else (
            template + f" (ref {distractor})"
        )  # fmt: skip
    start = template.index("{x}")
    return template.replace("{x}", value, 1), start


def build_corpus(
    seed: int = 20241127, per_label: int = 2000, negatives: int = 6000
) -> list[LabelledText]:
    """``per_label`` positives of each label and ``negatives`` hard negatives, shuffled."""
    rng = random.Random(seed)
    corpus: list[LabelledText] = []
    for label, (what, maker) in POSITIVE_MAKERS.items():
        for _ in range(per_label):
            value = maker(rng)
            text, start = _embed(rng, what, value)
            corpus.append(LabelledText(text, (Span(label, start, start + len(value)),)))
    for i in range(negatives):
        maker = NEGATIVE_MAKERS[i % len(NEGATIVE_MAKERS)]
        template = rng.choice(_ZH if rng.random() < 0.4 else _EN).replace("{what}", "reference")
        corpus.append(LabelledText(template.replace("{x}", maker(rng)), ()))
    rng.shuffle(corpus)
    return corpus
