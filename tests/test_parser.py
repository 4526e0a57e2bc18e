"""The fast ER7 parser (gateway.hl7v2.parser): encodings, escapes, structure, batches, charsets, errors.

All patients are synthetic; NHS numbers come from the 943 476 xxxx test range and
carry valid mod-11 check digits.
"""

from __future__ import annotations

import random

import pytest

from gateway.hl7v2.parser import (
    Encoding,
    Message,
    ParseError,
    Segment,
    decode_bytes,
    parse_message,
    split_batch,
    split_components,
    split_subcomponents,
)

NHS_NUMBER = "9434765919"
NHS_OID = "2.16.840.1.113883.2.1.4.1"


def nhs_number_is_valid(number: str) -> bool:
    """Modulus 11 check digit of an NHS number."""
    if len(number) != 10 or not number.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:9], range(10, 1, -1)))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(number[9])


def siu_s12(**overrides: str) -> str:
    """A typical 8-segment SIU^S12 (v2.5) with CR segment ends, written with ``|^~\\&``."""
    msh = dict(
        msh15="", msh16="", msh18="", version="2.5", control="MSG00001",
        msg_type="SIU^S12^SIU_S12", family="TESTCHILD", given="Amelia",
    )
    msh.update(overrides)
    segments = [
        "MSH|^~\\&|PAS|RVH^1.2.826.0.1.285^ISO|FHIRGW|GATEWAY|20240501103000+0100||"
        f"{msh['msg_type']}|{msh['control']}|P|{msh['version']}|||{msh['msh15']}|{msh['msh16']}|GBR|{msh['msh18']}",
        "SCH|APT123^PAS|APT123^PAS||||NEW^New booking^99PAS|ROUTINE^Routine^HL70276|OUTPATIENT|30|MIN|"
        "^^30^20240510090000+0100^20240510093000+0100|||||C1234567^BOOKER^Bea||||C1234567^BOOKER^Bea|||||Booked",
        f"PID|1||{NHS_NUMBER}^^^NHS&{NHS_OID}&ISO^NH~RVH123456^^^RVH^MR||{msh['family']}^{msh['given']}^Rose^^Miss||"
        "20170312|F|||1 Example Street^^Leeds^^LS1 1AA^GBR^H||0113 496 0000^PRN^PH",
        "PV1|1|O|PAED^CLINIC1^^RVH||||C7654321^GENERALIST^Gina^^^Dr|||PAE",
        "RGS|1|A",
        "AIS|1|A|PAED-OP^Paediatric outpatient^99PAS|20240510090000+0100|||30|MIN",
        "AIL|1|A|PAED^CLINIC1^^RVH|||20240510090000+0100|||30|MIN",
        "AIP|1|A|C7654321^GENERALIST^Gina^^^Dr|CONSULTANT||20240510090000+0100|||30|MIN",
    ]
    return "\r".join(segments) + "\r"


def with_encoding(text: str, chars: str) -> str:
    """The same message written with other separators (``chars`` replaces ``|^~\\&``)."""
    return text.translate(str.maketrans("|^~\\&", chars))


def test_the_sample_nhs_number_is_a_valid_test_number():
    assert nhs_number_is_valid(NHS_NUMBER)
    assert not nhs_number_is_valid("9434765918")


# --- encoding characters ---------------------------------------------------------------------

@pytest.mark.parametrize("chars", ["|^~\\&", "#$%@!", "!:*?=", "|*~\\;"])
def test_any_legal_encoding_characters_give_the_same_values(chars):
    msg = parse_message(with_encoding(siu_s12(), chars))
    field, component, repetition, escape, sub = chars
    assert (msg.enc.field, msg.enc.component, msg.enc.repetition, msg.enc.escape, msg.enc.subcomponent) == (
        field, component, repetition, escape, sub)
    assert msg.msh.raw(1) == field
    assert msg.msh.raw(2) == component + repetition + escape + sub
    assert (msg.message_code, msg.trigger_event, msg.structure) == ("SIU", "S12", "SIU_S12")
    assert msg.control_id == "MSG00001"
    pid = msg.find("PID")
    assert pid.value(3) == NHS_NUMBER
    assert pid.value(3, 4, 1) == "NHS"
    assert pid.value(3, 4, 2) == NHS_OID
    assert pid.value(3, 1, repetition=1) == "RVH123456"
    assert pid.value(5, 2) == "Amelia"
    assert [s.name for s in msg] == ["MSH", "SCH", "PID", "PV1", "RGS", "AIS", "AIL", "AIP"]


def test_hash_field_separator_with_dollar_percent_at_bang():
    text = "MSH#$%@!#PAS#RVH#GW#GWF#20240501##ADT$A04#C1#P#2.5\rPID#1##X1$$$NHS!2.16!ISO%X2##A@F@B@S@C$Zo@T@e\r"
    msg = parse_message(text)
    pid = msg.find("PID")
    assert msg.enc == Encoding("#", "$", "%", "@", "!", "", "utf-8")
    assert pid.repetitions(3) == ["X1$$$NHS!2.16!ISO", "X2"]
    assert pid.value(3, 4, 2) == "2.16"
    assert pid.value(5, 1) == "A#B$C"  # @F@ is the field separator, @S@ the component separator
    assert pid.value(5, 2) == "Zo!e"


def test_truncation_character_in_msh2():
    text = "MSH|^~\\&#|PAS|RVH|GW|GWF|20240501||ADT^A04^ADT_A01|C1|P|2.7\rPID|1||X1||Smith\\L\\Jones^Al#\r"
    msg = parse_message(text)
    assert msg.enc.truncation == "#"
    assert msg.enc.msh2 == "^~\\&#"
    assert msg.msh.raw(2) == "^~\\&#"
    assert msg.msh.raw(3) == "PAS"  # MSH-2 with five characters does not shift the fields
    assert msg.version == "2.7"
    assert msg.find("PID").value(5, 1) == "Smith#Jones"  # \\L\\ is the truncation character as data
    assert msg.find("PID").value(5, 2) == "Al#"  # a trailing # is the truncation mark, kept as sent
    assert Encoding().unescape("\\L\\") == "\\L\\"  # no truncation character declared: unknown


# --- escape sequences ------------------------------------------------------------------------

@pytest.mark.parametrize(("escaped", "expected"), [
    ("a\\F\\b", "a|b"),
    ("a\\S\\b", "a^b"),
    ("a\\T\\b", "a&b"),
    ("a\\R\\b", "a~b"),
    ("a\\E\\b", "a\\b"),
    ("\\X41\\BC", "ABC"),
    ("Zo\\XC3AB\\", "Zoë"),  # hex bytes decoded in the message character set (UTF-8 here)
    ("line one\\.br\\line two", "line one\nline two"),
    ("\\H\\important\\N\\ note", "important note"),  # highlighting on/off carries no text
    ("50\\Q\\ off", "50\\Q\\ off"),  # unknown escape kept literally
    ("\\Zlocal\\", "\\Zlocal\\"),  # locally defined escape: unknown to us, kept
    ("\\Mike\\", "\\Mike\\"),  # not a \\Mxxyy\\ character-set switch
    ("\\C2842\\abc", "abc"),  # ISO 2022 character-set switch: no text
    ("C:\\temp", "C:\\temp"),  # a lone escape character is data
    ("odd \\XA\\", "odd \\XA\\"),  # not whole bytes: kept
    ("", ""),
])
def test_escape_sequences(escaped, expected):
    assert Encoding().unescape(escaped) == expected
    text = f"MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5\rNTE|1||{escaped}\r"
    assert parse_message(text).find("NTE").value(3) == expected


def test_escapes_use_the_message_escape_character():
    enc = Encoding("#", "$", "%", "@", "!")
    assert enc.unescape("a@F@b@S@c@T@d@R@e@E@f") == "a#b$c!d%e@f"
    assert enc.unescape("a\\F\\b") == "a\\F\\b"  # backslash is data here


def test_hex_escape_decodes_in_the_msh18_character_set():
    text = "MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5|||||GBR|8859/1\rPID|1||X||Zo\\XEB\\^Amy\r"
    assert parse_message(text).find("PID").value(5) == "Zoë"  # text given as str
    assert parse_message(text.encode("latin-1")).find("PID").value(5) == "Zoë"  # and as bytes


# --- repetitions, components, sub-components ------------------------------------------------------

def test_pid3_repetitions_components_and_hd_subcomponents():
    pid = parse_message(siu_s12()).find("PID")
    assert pid.raw(3) == f"{NHS_NUMBER}^^^NHS&{NHS_OID}&ISO^NH~RVH123456^^^RVH^MR"
    assert pid.repetitions(3) == [f"{NHS_NUMBER}^^^NHS&{NHS_OID}&ISO^NH", "RVH123456^^^RVH^MR"]
    assert pid.field(3) == [
        [[NHS_NUMBER], [""], [""], ["NHS", NHS_OID, "ISO"], ["NH"]],
        [["RVH123456"], [""], [""], ["RVH"], ["MR"]],
    ]
    assert pid.components(3) == [NHS_NUMBER, "", "", f"NHS&{NHS_OID}&ISO", "NH"]
    assert pid.components(3, repetition=1) == ["RVH123456", "", "", "RVH", "MR"]
    assert split_subcomponents(pid.components(3)[3], pid.enc) == ["NHS", NHS_OID, "ISO"]
    assert pid.value(3, 5) == "NH"
    assert pid.value(3, 4, 3) == "ISO"
    assert pid.value(3, 5, repetition=1) == "MR"
    # Beyond what is there: empty, never an exception.
    assert pid.value(3, 4, 4) == ""
    assert pid.value(3, 9) == ""
    assert pid.value(3, repetition=2) == ""
    assert pid.value(99) == ""
    assert pid.components(3, repetition=5) == []
    assert pid.repetitions(99) == []
    assert pid.field(99) == []


def test_values_are_unescaped_after_splitting():
    text = "MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5\rPID|1||A\\T\\B&C\\S\\D^x\\R\\y~second\r"
    pid = parse_message(text).find("PID")
    assert pid.value(3, 1, 1) == "A&B"
    assert pid.value(3, 1, 2) == "C^D"
    assert pid.value(3, 2) == "x~y"
    assert pid.value(3, repetition=1) == "second"
    assert pid.field(3)[0][0] == ["A&B", "C^D"]
    assert split_components("a\\S\\b^c", pid.enc) == ["a^b", "c"]


def test_value_when_a_field_has_no_component_separator():
    pid = parse_message("MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5\rPID|1||PLAIN\r").find("PID")
    assert pid.value(3) == "PLAIN"
    assert pid.value(3, 2) == ""
    assert pid.value(3, 1, 2) == ""
    assert pid.value(3, repetition=1) == ""


# --- segment ends and empty fields ------------------------------------------------------------

@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n", "\n\r"])
def test_segment_ends(ending):
    msg = parse_message(siu_s12().replace("\r", ending))
    assert [s.name for s in msg] == ["MSH", "SCH", "PID", "PV1", "RGS", "AIS", "AIL", "AIP"]
    assert msg.find("AIP").value(3, 2) == "GENERALIST"
    assert msg.find("AIP").raw(10) == "MIN"  # nothing of a line end left on the last field


def test_mixed_segment_ends_and_blank_lines():
    segments = siu_s12().rstrip("\r").split("\r")
    ends = ["\r", "\n", "\r\n", "\r\n\r\n", "\n\n", "\r", "\n"]
    text = "".join(seg + end for seg, end in zip(segments, ends + ["\r\n"]))
    msg = parse_message(text)
    assert [s.name for s in msg] == ["MSH", "SCH", "PID", "PV1", "RGS", "AIS", "AIL", "AIP"]
    assert [s.index for s in msg] == list(range(1, 9))


def test_trailing_empty_fields_are_kept():
    msg = parse_message("MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5|||\rPV1|1|O|||\r")
    pv1 = msg.find("PV1")
    assert pv1.fields == ["PV1", "1", "O", "", "", ""]
    assert pv1.raw(5) == ""
    assert pv1.raw(6) == ""
    assert msg.msh.raw(15) == ""
    assert msg.version == "2.5"


# --- MSH field numbering -----------------------------------------------------------------------

def test_msh_field_numbering():
    msg = parse_message(siu_s12(msh15="AL", msh16="NE", msh18="UNICODE UTF-8"))
    msh = msg.msh
    assert msh.raw(1) == "|"
    assert msh.raw(2) == "^~\\&"
    assert msh.raw(3) == "PAS"
    assert msh.raw(4) == "RVH^1.2.826.0.1.285^ISO"
    assert msh.raw(7) == "20240501103000+0100"
    assert msh.raw(9) == "SIU^S12^SIU_S12"
    assert msh.raw(10) == "MSG00001"
    assert msh.raw(12) == "2.5"
    assert msh.raw(15) == "AL"
    assert msh.raw(16) == "NE"
    assert msh.raw(17) == "GBR"
    assert msh.raw(18) == "UNICODE UTF-8"
    # MSH-1 and MSH-2 are never split or unescaped: they are the separators.
    assert msh.value(1) == "|"
    assert msh.value(2) == "^~\\&"
    assert msh.field(2) == [[["^~\\&"]]]
    assert msh.components(2) == ["^~\\&"]
    assert msh.repetitions(2) == ["^~\\&"]
    assert (msg.sending_application, msg.sending_facility) == ("PAS", "RVH")
    assert (msg.receiving_application, msg.receiving_facility) == ("FHIRGW", "GATEWAY")
    assert (msg.accept_ack_type, msg.application_ack_type) == ("AL", "NE")
    assert msg.processing_id == "P"
    assert msg.message_datetime == "20240501103000+0100"


def test_find_and_find_all():
    msg = parse_message(siu_s12())
    assert msg.find("PID").value(5) == "TESTCHILD"
    assert msg.find("OBX") is None
    assert msg.find_all("OBX") == []
    assert len(msg.find_all("AIS")) == 1
    assert isinstance(msg, Message) and isinstance(msg.msh, Segment)


# --- batches and files -----------------------------------------------------------------------

def test_fhs_bhs_batch_with_several_messages():
    messages = [siu_s12(control=f"MSG{i:05d}", given=name) for i, name in enumerate(["Amelia", "Ben", "Cara"])]
    batch = ("FHS|^~\\&|PAS|RVH|||20240501\rBHS|^~\\&|PAS|RVH|||20240501\r" + "".join(messages)
             + "BTS|3\rFTS|1\r")
    parts = split_batch(batch)
    assert len(parts) == 3
    parsed = [parse_message(p) for p in parts]
    assert [m.control_id for m in parsed] == ["MSG00000", "MSG00001", "MSG00002"]
    assert [m.find("PID").value(5, 2) for m in parsed] == ["Amelia", "Ben", "Cara"]
    for m in parsed:
        assert [s.name for s in m][-1] == "AIP"  # no batch trailer inside a message


def test_file_with_two_batches():
    batch = ("FHS|^~\\&|PAS\rBHS|^~\\&|PAS|||||B1\r" + siu_s12(control="B1-1") + "BTS|1\r"
             "BHS|^~\\&|PAS|||||B2\r" + siu_s12(control="B2-1") + siu_s12(control="B2-2") + "BTS|2\rFTS|2\r")
    parsed = [parse_message(p) for p in split_batch(batch)]
    assert [m.control_id for m in parsed] == ["B1-1", "B2-1", "B2-2"]
    assert all([s.name for s in m] == ["MSH", "SCH", "PID", "PV1", "RGS", "AIS", "AIL", "AIP"] for m in parsed)


def test_plain_concatenated_messages_with_lf_ends():
    text = (siu_s12(control="A1") + siu_s12(control="A2")).replace("\r", "\n")
    parts = split_batch(text)
    assert [parse_message(p).control_id for p in parts] == ["A1", "A2"]


def test_mllp_framed_bytes_in_a_file():
    data = b"".join(b"\x0b" + siu_s12(control=c).encode() + b"\x1c\r" for c in ("F1", "F2", "F3"))
    parts = split_batch(data)
    assert [parse_message(p).control_id for p in parts] == ["F1", "F2", "F3"]
    # One framed message goes straight to parse_message too.
    assert parse_message(b"\x0b" + siu_s12(control="F9").encode() + b"\x1c\r").control_id == "F9"


def test_batch_bytes_in_latin1():
    data = (siu_s12(control="L1", msh18="8859/1", given="Zoë") + siu_s12(control="L2", msh18="8859/1")).encode(
        "latin-1")
    parts = split_batch(data)
    assert parse_message(parts[0]).find("PID").value(5, 2) == "Zoë"
    assert parse_message(parts[1]).control_id == "L2"


def test_parse_message_on_a_one_message_batch_file():
    text = "FHS|^~\\&|PAS\rBHS|^~\\&|PAS\r" + siu_s12() + "BTS|1\rFTS|1\r"
    msg = parse_message(text)
    assert msg.segments[0].name == "MSH"
    assert [s.name for s in msg][-1] == "AIP"


def test_byte_order_mark_is_ignored():
    assert parse_message("\ufeff" + siu_s12()).control_id == "MSG00001"
    msg = parse_message(b"\xef\xbb\xbf" + siu_s12(given="Zoë").encode())
    assert msg.find("PID").value(5, 2) == "Zoë"
    assert len(split_batch(b"\xef\xbb\xbf" + siu_s12().encode())) == 1


# --- character sets (MSH-18) ---------------------------------------------------------------------

def test_utf8_is_the_default():
    msg = parse_message(siu_s12(given="Zoë").encode("utf-8"))
    assert msg.find("PID").value(5, 2) == "Zoë"
    assert msg.enc.charset == "utf-8"
    assert msg.warnings == []


def test_iso_8859_1_declared_in_msh18():
    msg = parse_message(siu_s12(given="Zoë", msh18="8859/1").encode("latin-1"))
    assert msg.find("PID").value(5, 2) == "Zoë"
    assert msg.enc.charset == "iso-8859-1"
    assert msg.warnings == []


def test_msh18_with_repetitions_uses_the_first():
    msg = parse_message(siu_s12(given="Zoë", msh18="8859/1~8859/15").encode("latin-1"))
    assert msg.enc.charset == "iso-8859-1"
    assert msg.find("PID").value(5, 2) == "Zoë"
    assert msg.warnings == []


def test_unicode_utf8_declared():
    msg = parse_message(siu_s12(given="Zoë", msh18="UNICODE UTF-8").encode("utf-8"))
    assert msg.find("PID").value(5, 2) == "Zoë"


def test_invalid_utf8_without_msh18_falls_back_to_cp1252_with_a_warning():
    data = siu_s12(given="Zoë").encode("latin-1")  # 0xEB is not valid UTF-8 here
    msg = parse_message(data)
    assert msg.find("PID").value(5, 2) == "Zoë"
    assert msg.enc.charset == "cp1252"
    assert len(msg.warnings) == 1
    assert "windows-1252" in msg.warnings[0]


def test_decode_bytes():
    text, codec, warnings = decode_bytes(siu_s12(msh18="8859/1", given="Zoë").encode("latin-1"))
    assert codec == "iso-8859-1" and warnings == [] and "Zoë" in text
    text, codec, warnings = decode_bytes(b"\x93quoted\x94 MSH")
    assert codec == "cp1252" and warnings and "\u201cquoted\u201d" in text


def test_hex_escape_in_utf8_bytes_message():
    data = "MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5\rPID|1||X||Zo\\XC3AB\\\r".encode()
    assert parse_message(data).find("PID").value(5) == "Zoë"


# --- what is not a message ---------------------------------------------------------------------

def test_missing_msh():
    with pytest.raises(ParseError) as err:
        parse_message("PID|1||X\rPV1|1|O\r")
    assert err.value.segment == "MSH"
    assert err.value.code == 100


@pytest.mark.parametrize("text", ["", "   \r\n", "\x0b\x1c\r", "XMSH|^~\\&|A"])
def test_nothing_to_parse(text):
    with pytest.raises(ParseError):
        parse_message(text)


@pytest.mark.parametrize("msh2", ["^~", "^~\\", "^^\\&", "^~\\&#*", "^~a&", "^~\\&^", "^ \\&", "^~\\|"])
def test_invalid_msh2(msh2):
    with pytest.raises(ParseError) as err:
        parse_message(f"MSH|{msh2}|A|B|C|D|20240501||ADT^A04|C1|P|2.5\rPID|1\r")
    assert err.value.field == 2
    assert err.value.segment == "MSH"


@pytest.mark.parametrize("separator", ["A", "1", " ", "\t", "\x01"])
def test_invalid_msh1(separator):
    with pytest.raises(ParseError) as err:
        parse_message(f"MSH{separator}^~\\&{separator}A{separator}B\r")
    assert err.value.field == 1


@pytest.mark.parametrize("data", [
    b"\x00\xff\xfe\x13garbage\x80\x81",
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    bytes(range(256)),
    b"MS",
    b"MSH",
])
def test_garbage_bytes(data):
    with pytest.raises(ParseError):
        parse_message(data)


@pytest.mark.parametrize(("bad", "position"), [("P!D|1", 2), ("PIDX|1", 2), ("PI|1", 2), ("ÄBC|1", 2),
                                               ("1 2|x", 2)])
def test_invalid_segment_names(bad, position):
    text = f"MSH|^~\\&|A|B|C|D|20240501||ADT^A04|C1|P|2.5\r{bad}\rPV1|1\r"
    with pytest.raises(ParseError) as err:
        parse_message(text)
    assert err.value.sequence == position  # position of the bad segment in the message
    assert err.value.code == 100


def test_second_msh_inside_one_message():
    with pytest.raises(ParseError) as err:
        parse_message(siu_s12(control="A") + siu_s12(control="B"))
    assert err.value.segment == "MSH"
    assert err.value.sequence == 2


def test_random_garbage_only_ever_raises_parse_error():
    rng = random.Random(20240501)
    base = siu_s12().encode()
    for _ in range(500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        try:
            msg = parse_message(bytes(data))
        except ParseError:
            continue
        # Whatever parses must still answer questions without exceptions.
        assert msg.msh.name == "MSH"
        for seg in msg:
            for n in range(len(seg.fields) + 2):
                seg.value(n, 2, 2, 1)
                seg.field(n)


# --- escape_text round trip ---------------------------------------------------------------------

ENCODINGS = [Encoding(), Encoding("#", "$", "%", "@", "!"), Encoding("|", "^", "~", "\\", "&", "#")]


def _round_trip(enc: Encoding, text: str) -> None:
    escaped = enc.escape_text(text)
    for sep in (enc.field, enc.component, enc.repetition, enc.subcomponent):
        assert sep not in escaped, (text, escaped)
    if enc.truncation:
        assert not escaped.endswith(enc.truncation), (text, escaped)
    assert "\r" not in escaped and "\n" not in escaped
    assert enc.unescape(escaped) == text, (text, escaped)
    # And it survives a trip through a real message in that encoding.
    msg = parse_message(f"MSH{enc.field}{enc.msh2}{enc.field}A\rNTE{enc.field}1{enc.field}{enc.field}"
                        f"{escaped}{enc.field}x\r")
    assert msg.find("NTE").value(3) == text
    assert msg.find("NTE").raw(4) == "x"


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(enc=st.sampled_from(ENCODINGS),
           text=st.text(alphabet=st.sampled_from(list("|^~\\&#$%@!abcXF SRTE.\n")), max_size=40))
    def test_escape_text_round_trip(enc, text):
        _round_trip(enc, text)

except ImportError:  # pragma: no cover - hypothesis is optional

    def test_escape_text_round_trip():
        rng = random.Random(1234)
        alphabet = list("|^~\\&#$%@!abcXF SRTE.\nëß")
        for _ in range(3000):
            enc = rng.choice(ENCODINGS)
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            _round_trip(enc, text)


@pytest.mark.parametrize("text", ["", "plain", "a|b^c~d\\e&f", "\\F\\ literally", "one\ntwo", "#1 & #2",
                                  "\\", "\\\\", "\\E\\"])
def test_escape_text_examples(text):
    for enc in ENCODINGS:
        _round_trip(enc, text)


def test_escape_text_output():
    assert Encoding().escape_text("A|B^C&D~E\\F") == "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F"
    assert Encoding().escape_text("one\r\ntwo") == "one\\.br\\two"
    v27 = Encoding("|", "^", "~", "\\", "&", "#")
    assert v27.escape_text("#1 and #2") == "#1 and #2"  # only a final # would read as truncation
    assert v27.escape_text("Flat 2#") == "Flat 2\\L\\"


def test_encode_as_declared_round_trips_a_latin1_message_through_text():
    from gateway.hl7v2.parser import encode_as_declared

    text = "MSH|^~\\&|A|B|C|D|20240101||ADT^A08|1|P|2.5||||||8859/1\rPID|1||1^^^X^MR||Zoë^Ann\r"
    data = encode_as_declared(text)
    assert b"Zo\xeb" in data  # ISO-8859-1 bytes, as MSH-18 declares
    assert parse_message(data).find("PID").value(5, 1) == "Zoë"
