"""ACK building (gateway.hl7v2.ack): every ACK is read back with three parsers.

Our own parser, python-hl7 (``hl7.parse``) and hl7apy (tolerant) must all see the
same MSH, MSA and ERR fields: the engines at the other end use parsers like these.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message as hl7apy_parse

from gateway.hl7v2.ack import (
    TABLE_0357,
    ack_code_of,
    ack_mode,
    build_ack,
    generic_reject,
    issue_from_parse_error,
)
from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import ParseError, parse_message

NOW = datetime(2024, 5, 1, 10, 30, 0, tzinfo=timezone(timedelta(hours=1)))
NHS_NUMBER = "9434765919"  # synthetic, valid mod-11 check digit


def siu(*, msh15: str = "", msh16: str = "", version: str = "2.5", processing: str = "P", msh18: str = "",
        control: str = "MSG00001") -> str:
    return "\r".join([
        "MSH|^~\\&|PAS|RVH^1.2.826.0.1.285^ISO|FHIRGW|GATEWAY|20240501103000+0100||SIU^S12^SIU_S12|"
        f"{control}|{processing}|{version}|||{msh15}|{msh16}|GBR|{msh18}",
        "SCH|APT123^PAS|APT123^PAS||||NEW^New booking^99PAS",
        f"PID|1||{NHS_NUMBER}^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH||TESTCHILD^Amelia||20170312|F",
        "RGS|1|A",
    ]) + "\r"


class ReadBack:
    """One ACK as three parsers see it."""

    def __init__(self, ack: str) -> None:
        assert ack.endswith("\r")
        assert "\n" not in ack and "\x0b" not in ack and "\x1c" not in ack
        self.text = ack
        self.ours = parse_message(ack)
        self.pyhl7 = hl7.parse(ack)
        self.hl7apy = hl7apy_parse(ack, validation_level=VALIDATION_LEVEL.TOLERANT)

    def _apy(self, element) -> str:
        """hl7apy's ER7 for an element; it writes a v2.7 truncation character in data as \\L\\."""
        text = element.to_er7() if element else ""
        enc = self.ours.enc
        return text.replace(f"{enc.escape}L{enc.escape}", enc.truncation) if enc.truncation else text

    def msh(self, n: int) -> str:
        """MSH-n raw, checked to be the same in all three parsers."""
        ours = self.ours.msh.raw(n)
        assert str(self.pyhl7.segment("MSH")[n]) == ours
        if n > 1:
            child = getattr(self.hl7apy.msh, f"msh_{n}")
            assert self._apy(child) == ours, n
        return ours

    def msa(self, n: int) -> str:
        ours = self.ours.find("MSA").raw(n)
        assert str(self.pyhl7.segment("MSA")[n]) == ours
        assert self._apy(getattr(self.hl7apy.msa, f"msa_{n}")) == ours
        return ours

    def errs(self) -> list:
        ours = self.ours.find_all("ERR")
        theirs = [seg for seg in self.pyhl7 if str(seg[0]) == "ERR"]
        assert len(theirs) == len(ours)
        apy = self.hl7apy.children.get("ERR") if ours else []
        assert len(apy) == len(ours)
        for mine, other, third in zip(ours, theirs, apy):
            assert len(other) == len(mine.fields)
            for n in range(1, len(mine.fields)):
                assert str(other[n]) == mine.raw(n)
                element = getattr(third, f"err_{n}")
                assert self._apy(element) == mine.raw(n), n
        return ours


# --- original mode ---------------------------------------------------------------------------

def test_aa_original_mode_fields():
    msg = parse_message(siu())
    ack = ReadBack(build_ack(msg, "AA", now=NOW))
    assert ack.msh(1) == "|"
    assert ack.msh(2) == "^~\\&"
    assert ack.msh(3) == "FHIRGW"
    assert ack.msh(4) == "GATEWAY"
    assert ack.msh(5) == "PAS"  # the sender's MSH-3 and MSH-4, swapped into MSH-5/6
    assert ack.msh(6) == "RVH^1.2.826.0.1.285^ISO"
    assert ack.msh(7) == "20240501103000+0100"
    assert ack.msh(9) == "ACK^S12^ACK"
    control = ack.msh(10)
    assert control and control != "MSG00001" and len(control) <= 20
    assert ack.msh(11) == "P"
    assert ack.msh(12) == "2.5"
    assert ack.msa(1) == "AA"
    assert ack.msa(2) == "MSG00001"
    assert ack.msa(3) == "Message accepted"
    assert ack.errs() == []
    assert [s.name for s in ack.ours] == ["MSH", "MSA"]
    assert ack_code_of(ack.text) == "AA"
    assert ack_mode(msg) == "original"


def test_control_ids_are_new_and_unique_unless_given():
    msg = parse_message(siu())
    ids = {parse_message(build_ack(msg, "AA")).control_id for _ in range(200)}
    assert len(ids) == 200
    assert parse_message(build_ack(msg, "AA", control_id="ACK-1")).control_id == "ACK-1"


def test_our_application_and_facility_can_be_set():
    ack = ReadBack(build_ack(parse_message(siu()), "AA", sending_application="SAFEGW",
                             sending_facility="TRUST^X", now=NOW))
    assert ack.msh(3) == "SAFEGW"
    assert ack.msh(4) == "TRUST\\S\\X"  # escaped: our own text must not add components


def test_timestamp_is_local_time_with_offset():
    ack = parse_message(build_ack(parse_message(siu()), "AA"))
    assert re.fullmatch(r"\d{14}[+-]\d{4}", ack.msh.raw(7))
    naive = datetime(2024, 1, 15, 8, 0, 0)
    stamp = parse_message(build_ack(parse_message(siu()), "AA", now=naive)).msh.raw(7)
    assert stamp.startswith("20240115080000") and re.fullmatch(r"\d{14}[+-]\d{4}", stamp)
    utc = datetime(2024, 1, 15, 8, 0, 0, tzinfo=timezone.utc)
    assert parse_message(build_ack(parse_message(siu()), "AA", now=utc)).msh.raw(7) == "20240115080000+0000"


def test_processing_id_version_and_charset_are_echoed():
    ack = ReadBack(build_ack(parse_message(siu(processing="T", version="2.4", msh18="8859/1")), "AA", now=NOW))
    assert ack.msh(11) == "T"
    assert ack.msh(12) == "2.4"
    assert ack.msh(18) == "8859/1"


def test_version_defaults_to_2_5_1():
    text = "MSH|^~\\&|PAS|RVH|GW|GWF|20240501||ADT^A04|C1|P\rPID|1\r"
    ack = ReadBack(build_ack(parse_message(text), "AA", now=NOW))
    assert ack.msh(12) == "2.5.1"
    assert ack.msh(9) == "ACK^A04^ACK"


def test_ae_with_issues_has_one_err_per_issue():
    issues = [
        Issue("E", 101, "PID-3 has no NHS number", "PID", 1, 3),
        Issue("E", 103, "Unknown clinic code XYZ", "AIL", 2, 3, component=1, repetition=2),
        Issue("W", 207, "Store slow to answer"),
    ]
    ack = ReadBack(build_ack(parse_message(siu()), "AE", issues, now=NOW))
    assert ack.msa(1) == "AE"
    assert ack.msa(2) == "MSG00001"
    assert ack.msa(3) == "PID-3 has no NHS number"  # the first error, when no text is given
    errs = ack.errs()
    assert len(errs) == 3
    first, second, third = errs
    assert first.raw(1) == "PID^1^3^101&Required field missing&HL70357"
    assert first.raw(2) == "PID^1^3"
    assert first.raw(3) == "101^Required field missing^HL70357"
    assert first.raw(4) == "E"
    assert first.value(8) == "PID-3 has no NHS number"
    assert second.raw(2) == "AIL^2^3^2^1"
    assert second.raw(3) == "103^Table value not found^HL70357"
    assert third.raw(1) == "^^^207&Application internal error&HL70357"
    assert third.raw(2) == ""
    assert third.raw(4) == "W"
    # ERR-1 (v2.3 ELD) reads back as SEG, sequence, field, code&text&table.
    assert first.value(1, 4, 1) == "101" and first.value(1, 4, 3) == "HL70357"


@pytest.mark.parametrize("code", sorted(TABLE_0357))
def test_table_0357_texts(code):
    ack = ReadBack(build_ack(parse_message(siu()), "AE", [Issue("E", code, "x", "PID", 1, 3)], now=NOW))
    err = ack.errs()[0]
    assert err.value(3, 1) == str(code)
    assert err.value(3, 2) == TABLE_0357[code]
    assert err.value(3, 3) == "HL70357"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4"])
def test_before_v2_5_err_has_only_err1_carrying_the_message(version):
    issues = [Issue("E", 101, "PID-3 has no NHS | number", "PID", 1, 3), Issue("W", 103, "odd code")]
    ack = ReadBack(build_ack(parse_message(siu(version=version)), "AE", issues, now=NOW))
    assert ack.msh(12) == version
    first, second = ack.errs()
    assert len(first.fields) == 2 and len(second.fields) == 2  # ERR-1 only
    assert first.raw(1) == "PID^1^3^101&PID-3 has no NHS \\F\\ number&HL70357"
    assert first.value(1, 4, 2) == "PID-3 has no NHS | number"
    assert second.raw(1) == "^^^103&odd code&HL70357"


def test_warnings_may_accompany_aa():
    ack = ReadBack(build_ack(parse_message(siu()), "AA", [Issue("W", 103, "Local code mapped", "SCH", 1, 6)],
                             now=NOW))
    assert ack.msa(1) == "AA"
    assert ack.msa(3) == "Message accepted"
    (err,) = ack.errs()
    assert err.raw(4) == "W"


def test_ar_with_text():
    ack = ReadBack(build_ack(parse_message(siu()), "AR", [Issue("E", 200, "SIU^S99 is not supported", "MSH", 1, 9)],
                             text="Unsupported message", now=NOW))
    assert ack.msa(1) == "AR"
    assert ack.msa(3) == "Unsupported message"
    assert ack_code_of(ack.text) == "AR"


def test_long_msa3_is_cut():
    ack = parse_message(build_ack(parse_message(siu()), "AE", text="x" * 500))
    assert len(ack.find("MSA").value(3)) <= 80


def test_unknown_code_is_refused():
    with pytest.raises(ValueError):
        build_ack(parse_message(siu()), "CA")


def test_without_a_message():
    ack = ReadBack(build_ack(None, "AR", [Issue("E", 100, "unreadable")], now=NOW))
    assert ack.msh(2) == "^~\\&"
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == ""
    assert ack.msh(9) == "ACK^^ACK"
    assert ack.msh(12) == "2.5.1"


# --- enhanced mode ---------------------------------------------------------------------------

@pytest.mark.parametrize(("msh15", "msh16", "code", "expected"), [
    ("", "", "AA", "AA"),  # original mode
    ("", "", "AE", "AE"),
    ("NE", "AL", "AA", "AA"),  # application ACK only
    ("NE", "AL", "AE", "AE"),
    ("", "AL", "AR", "AR"),
    ("NE", "ER", "AE", "AE"),
    ("NE", "SU", "AA", "AA"),
    ("AL", "AL", "AA", "CA"),  # a commit ACK was asked for
    ("AL", "AL", "AE", "CE"),
    ("AL", "NE", "AR", "CR"),
    ("ER", "", "AE", "CE"),
    ("AL", "", "AA", "CA"),
    ("NE", "NE", "AA", "CA"),
    ("NE", "", "AR", "CR"),
    ("al", "ne", "AA", "CA"),  # case-insensitive
])
def test_enhanced_mode(msh15, msh16, code, expected):
    msg = parse_message(siu(msh15=msh15, msh16=msh16))
    assert ack_mode(msg) == ("enhanced" if msh15 or msh16 else "original")
    ack = ReadBack(build_ack(msg, code, now=NOW))
    assert ack.msa(1) == expected
    assert ack_code_of(ack.text) == expected


# --- escaping --------------------------------------------------------------------------------

NASTY = "Bad value 'A|B^C~D\\E&F' in PID-5\r\nsecond line"


def test_every_text_value_is_escaped():
    issue = Issue("E", 102, NASTY, "PID", 1, 5)
    ack = ReadBack(build_ack(parse_message(siu()), "AE", [issue], text=NASTY, now=NOW))
    (err,) = ack.errs()
    assert err.value(8) == NASTY.replace("\r\n", " ")
    assert len(err.fields) == 9  # ERR-1 .. ERR-8: nothing leaked into new fields
    assert hl7.parse(ack.text).unescape(str(ack.pyhl7.segment("ERR")[8])) == NASTY.replace("\r\n", " ")
    msa = ack.ours.find("MSA")
    assert len(msa.fields) == 4
    assert "|" not in msa.value(3) or msa.raw(3).count("|") == 0
    assert msa.value(3).startswith("Bad value 'A|B^C~D\\E&F'")
    assert [s.name for s in ack.ours] == ["MSH", "MSA", "ERR"]


@pytest.mark.parametrize("chars", ["#$%@!", "!:*?=", "|^~\\&#"])
def test_ack_uses_the_messages_encoding_characters(chars):
    truncation = len(chars) == 6  # the v2.7 truncation character
    source = siu(version="2.7" if truncation else "2.5").translate(str.maketrans("|^~\\&", chars[:5]))
    if truncation:
        source = source.replace("MSH|^~\\&|", "MSH|^~\\&#|", 1)
    msg = parse_message(source)
    text = "odd chars: | ^ ~ \\ & # $ % @ ! : * ? ="
    ack = ReadBack(build_ack(msg, "AE", [Issue("E", 101, text, "PID", 1, 3, component=4)], text=text, now=NOW))
    assert ack.msh(1) == msg.enc.field
    assert ack.msh(2) == msg.enc.msh2
    assert ack.ours.enc == msg.enc
    assert ack.msh(5) == "PAS"
    assert ack.ours.msh.value(6, 2) == "1.2.826.0.1.285"
    assert ack.ours.msh.value(9, 1) == "ACK" and ack.ours.msh.value(9, 2) == "S12"
    assert ack.msa(1) == "AE"
    assert ack.msa(2) == "MSG00001"
    (err,) = ack.errs()
    assert err.value(8) == text
    assert err.value(2, 1) == "PID" and err.value(2, 5) == "4"
    assert ack.ours.find("MSA").value(3) == text


# --- generic reject ----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"\x00\xff\xfe\x13garbage\x80", b"", "hello world", b"GET / HTTP/1.1\r\n\r\n"])
def test_generic_reject_on_garbage(raw):
    ack = ReadBack(generic_reject(raw, "no MSH segment found", now=NOW))
    assert ack.msh(2) == "^~\\&"
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == ""
    assert ack.msh(7) == "20240501103000+0100"
    (err,) = ack.errs()
    assert err.raw(4) == "E"
    assert err.value(8) == "no MSH segment found"
    assert ack_code_of(ack.text) == "AR"


def test_generic_reject_on_a_truncated_msh():
    ack = ReadBack(generic_reject(b"\x0bMSH|^~\\&|PAS|RVH^1.2.826.0.1.285^ISO|FHIRGW|GATEWAY|202405", "truncated",
                                  now=NOW))
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == ""
    assert ack.msh(5) == "PAS"
    assert ack.msh(6) == "RVH^1.2.826.0.1.285^ISO"


def test_generic_reject_salvages_control_id_trigger_and_version():
    raw = siu(control="CTRL-77", version="2.6").replace("PID|1", "P!D|1").encode()
    with pytest.raises(ParseError) as err:
        parse_message(raw)
    ack = ReadBack(generic_reject(raw, str(err.value), issues=[issue_from_parse_error(err.value)], now=NOW))
    assert ack.msa(1) == "AR"
    assert ack.msa(2) == "CTRL-77"
    assert ack.msh(9) == "ACK^S12^ACK"
    assert ack.msh(12) == "2.6"
    assert ack.msh(5) == "PAS"
    (err_seg,) = ack.errs()
    assert err_seg.value(2, 1) == "P!D"
    assert err_seg.value(2, 2) == "3"  # the third segment
    assert err_seg.value(1, 1) == "P!D"  # and in the v2.3-style ERR-1


def test_generic_reject_with_custom_separators_converts_to_defaults():
    raw = siu(control="C1").translate(str.maketrans("|^~\\&", "#$%@!")).replace("SCH#", "S!H#")
    # MSH-10 holds a "|" (plain data under "#" separators) and an escaped "#".
    raw = raw.replace("#C1#", "#C|1@F@2#")
    ack = ReadBack(generic_reject(raw, "bad segment", now=NOW))
    assert ack.msh(1) == "|"
    assert ack.msh(2) == "^~\\&"
    assert ack.msa(2) == "C\\F\\1#2"
    assert ack.ours.find("MSA").value(2) == "C|1#2"
    assert ack.msh(6) == "RVH^1.2.826.0.1.285^ISO"  # components re-joined with "^"
    assert ack.msh(9) == "ACK^S12^ACK"


def test_generic_reject_with_invalid_msh2_still_finds_the_control_id():
    raw = "MSH|^~|PAS|RVH|GW|GWF|20240501||ADT^A04|C-42|P|2.5\rPID|1\r"
    with pytest.raises(ParseError) as err:
        parse_message(raw)
    assert err.value.field == 2
    ack = ReadBack(generic_reject(raw, str(err.value), now=NOW))
    assert ack.msa(2) == "C-42"
    assert ack.msh(5) == "PAS"


def test_generic_reject_never_breaks_on_separator_like_values():
    raw = "MSH|^~|P|S|R|F|2024||X^Y|id\\with&odd~chars|P|2.5\r"
    ack = ReadBack(generic_reject(raw, "x", now=NOW))
    assert ack.msa(1) == "AR"
    assert len(ack.ours.find("MSA").fields) == 4
    assert ack.ours.find("MSA").value(2) == "id\\with&odd~chars"  # escaped whole, read back whole
    assert ack.msh(9) == "ACK^^ACK"  # X^Y was escaped whole too: no trigger to salvage


# --- ack_code_of -----------------------------------------------------------------------------

def test_ack_code_of():
    msg = parse_message(siu(msh15="AL", msh16="AL"))
    assert ack_code_of(build_ack(msg, "AE")) == "CE"
    assert ack_code_of(b"\x0b" + build_ack(msg, "AA").encode() + b"\x1c\r") == "CA"
    assert ack_code_of("MSH|^~\\&|X\rMSA|AA|1\r") == "AA"
    assert ack_code_of("garbage") == ""
    assert ack_code_of("MSH|^~\\&|X\rPID|1\r") == ""
    assert ack_code_of("junk\rMSA|AR|1|text\r") == "AR"  # read even when the MSH is broken
