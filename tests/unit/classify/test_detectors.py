# ruff: noqa: RUF001
# (Chinese sentences use full-width punctuation on purpose.)
"""Each detector on its positives, its hard negatives and its edge cases."""

from __future__ import annotations

import pytest

from broker.classify.detectors import default_detector_set
from broker.classify.detectors.checksums import (
    cn_id_check_char,
    cn_id_ok,
    iban_check_digits,
    iban_ok,
    luhn_ok,
)


def found(text: str) -> list[tuple[str, str]]:
    """(label, matched text) for every span the default set reports."""
    return [(s.label, text[s.start : s.end]) for s in default_detector_set().scan(text)]


def only(label: str, value: str, context: str = "see {} here") -> None:
    text = context.format(value)
    assert found(text) == [(label, value)], text


def nothing(text: str) -> None:
    assert found(text) == [], text


def test_checksums_against_published_examples() -> None:
    assert luhn_ok("79927398713") and not luhn_ok("79927398710")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert iban_check_digits("DE", "370400440532013000") == "89"
    assert cn_id_check_char("11010519491231002") == "X"
    assert cn_id_ok("11010519491231002X") and cn_id_ok("11010519491231002x")
    assert not cn_id_ok("110105194902300021")  # 30 February


@pytest.mark.parametrize(
    "value",
    ["john.smith@example.com", "li.wei+news@mail.example.co.uk", "x@qq.com", "A_B@sub.example.io"],
)
def test_email(value: str) -> None:
    only("pii.email", value)
    only("pii.email", value, "请联系{}谢谢")
    only("pii.email", value, "<{}>.")


@pytest.mark.parametrize(
    "text", ["@handle", "admin@localhost", "a..b@example.com", "v@1.2.3", "name at x dot com"]
)
def test_email_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize(
    "value",
    [
        "(555) 123-4567", "555-123-4567", "555.123.4567", "+1 555 123 4567", "1-555-123-4567",
        "+44 20 7946 0958", "+44 (0)20 7946 0958", "020 7946 0958", "07700 900123", "07700900123",
        "030 12345678", "(089) 1234567", "0151-12345678", "+49 30 12345678",
        "01 23 45 67 89", "06.12.34.56.78", "0612345678", "+33 6 12 34 56 78",
        "13812345678", "138 1234 5678", "138-1234-5678", "+86 138 1234 5678", "+8613812345678",
        "0086 138 1234 5678",
    ],
)  # fmt: skip
def test_phone(value: str) -> None:
    only("pii.phone", value)
    only("pii.phone", value, "我的手机是{}，谢谢")


@pytest.mark.parametrize(
    "text",
    [
        "1381234567890",  # CN mobile inside a longer digit run
        "913812345678",
        "ID13812345678",  # glued to letters
        "2023-11-08 14:23:05", "08.11.2023", "12/31/2024", "v1.2.3", "$1,234.56",
        "978-3-16-148410-0", "order 100234567", "+999 1234 5678",  # no such calling code
        "NL91 ABNA 0417 1643 01",  # IBAN-shaped (bad check digits): not a phone either
        "4111 1111 1111 1112",
    ],
)  # fmt: skip
def test_phone_negatives(text: str) -> None:
    nothing(text)


def test_phone_trailing_number_is_cut_at_a_group() -> None:
    assert found("call +44 20 7946 0958 12 times") == [("pii.phone", "+44 20 7946 0958")]


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "5555555555554444",
        "2223003122003222", "378282246310005", "3782 822463 10005", "6011111111111117",
        "3530111333300000", "6200000000000005", "4222222222222", "36227206271667",
    ],
)  # fmt: skip
def test_card(value: str) -> None:
    only("pci.card", value)
    only("pci.card", value, "卡号{}。")


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # Luhn fails
        "4111 1111 1111 1112",
        "9111111111111111111",  # no such network (passes Luhn? irrelevant)
        "41111111111111111",  # 17-digit Visa does not exist
        "4111 1111-1111 1111",  # mixed separators
        "14111111111111111",  # inside a longer run
        "x4111111111111111",
    ],
)  # fmt: skip
def test_card_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize(
    "value",
    [
        "DE89370400440532013000", "DE89 3704 0044 0532 0130 00", "GB29NWBK60161331926819",
        "GB29 NWBK 6016 1331 9268 19", "FR1420041010050500013M02606", "NO9386011117947",
        "CH9300762011623852957",
    ],
)  # fmt: skip
def test_iban(value: str) -> None:
    only("finance.iban", value)
    only("finance.iban", value, "IBAN：{}，谢谢")


def test_iban_followed_by_a_short_word_is_cut() -> None:
    text = "pay DE89 3704 0044 0532 0130 00 BIC COBADEFFXXX"
    assert found(text) == [("finance.iban", "DE89 3704 0044 0532 0130 00")]


@pytest.mark.parametrize(
    "text", ["DE88370400440532013000", "GB29NWBK6016133192681", "XX89370400440532013000"]
)
def test_iban_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize(
    "value", ["11010519491231002X", "11010519491231002x", "440524198001010013"]
)
def test_cn_resident_id(value: str) -> None:
    only("pii.national_id.cn", value)
    only("pii.national_id.cn", value, "身份证号码{}已核实")


@pytest.mark.parametrize(
    "text",
    [
        "110105194912310021",  # wrong check character
        "110105194902300025",  # 30 February
        "990105194912310021",  # no such province
        "1110105194912310021X",  # inside a longer run
        "110105191312310024",  # born in 1913? fine, but check char wrong
    ],
)
def test_cn_resident_id_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize("value", ["536-22-1234", "001-01-0001", "772 11 9876"])
def test_ssn(value: str) -> None:
    only("pii.national_id.us_ssn", value)


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000",
        "078-05-1120", "536-22 1234", "1536-22-1234", "536-22-12345", "536221234",
    ],
)  # fmt: skip
def test_ssn_negatives(text: str) -> None:
    nothing(text)


@pytest.mark.parametrize(
    "value",
    ["192.168.1.1", "8.8.8.8", "2001:db8::1", "fe80::1%eth0", "::1", "::ffff:192.0.2.1",
     "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
)  # fmt: skip
def test_ip(value: str) -> None:
    only("net.ip", value)
    only("net.ip", value, "备注 {} 明天")


@pytest.mark.parametrize(
    "text",
    ["256.1.1.1", "1.2.3.4.5", "01.2.3.4", "OID 1.3.6.1.4.1.311", "12:30:45",
     "00:1A:2B:3C:4D:5E", "std::vector", "a :: b", "2001:db8:::1"],
)  # fmt: skip
def test_ip_negatives(text: str) -> None:
    nothing(text)
