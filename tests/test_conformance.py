"""Structural conformance (gateway.hl7v2.conformance) against hl7apy's HL7 v2 definitions."""

from __future__ import annotations

import random

import pytest

from gateway.hl7v2 import conformance
from gateway.hl7v2.conformance import check_structure
from gateway.hl7v2.errors import Issue

NHS_NUMBER = "9434765919"  # synthetic, valid mod-11 check digit

SIU_SEGMENTS = [
    "MSH|^~\\&|PAS|RVH^1.2.826.0.1.285^ISO|FHIRGW|GATEWAY|20240501103000+0100||SIU^S12^SIU_S12|MSG00001|P|2.5"
    "|||NE|AL|GBR|UNICODE UTF-8",
    "SCH|APT123^PAS|APT123^PAS||||NEW^New booking^99PAS|ROUTINE^Routine^HL70276|OUTPATIENT|30|MIN|"
    "^^30^20240510090000+0100^20240510093000+0100|||||C1234567^BOOKER^Bea||||C1234567^BOOKER^Bea|||||Booked",
    f"PID|1||{NHS_NUMBER}^^^NHS&2.16.840.1.113883.2.1.4.1&ISO^NH~RVH123456^^^RVH^MR||TESTCHILD^Amelia^Rose^^Miss||"
    "20170312|F|||1 Example Street^^Leeds^^LS1 1AA^GBR^H||0113 496 0000^PRN^PH",
    "PV1|1|O|PAED^CLINIC1^^RVH||||C7654321^GENERALIST^Gina^^^Dr",
    "RGS|1|A",
    "AIS|1|A|PAED-OP^Paediatric outpatient^99PAS|20240510090000+0100|||30|MIN",
    "AIL|1|A|PAED^CLINIC1^^RVH|||20240510090000+0100|||30|MIN",
    "AIP|1|A|C7654321^GENERALIST^Gina^^^Dr|CONSULTANT||20240510090000+0100|||30|MIN",
]


def siu(segments: list[str] | None = None) -> str:
    return "\r".join(SIU_SEGMENTS if segments is None else segments) + "\r"


def without(name: str) -> list[str]:
    return [s for s in SIU_SEGMENTS if not s.startswith(name + "|")]


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity == "E"]


def test_a_valid_siu_s12_has_no_errors():
    issues = check_structure(siu())
    assert errors(issues) == [], issues
    assert all(isinstance(i, Issue) for i in issues)


def test_coding_system_patterns_of_table_0396_are_not_findings():
    # 99PAS (local, 99zzz) and HL70276 (an HL7 table, HL7nnnn) match table 0396's patterns.
    assert check_structure(siu()) == []
    issues = check_structure(siu().replace("^99PAS|", "^MADEUP|"))
    assert [(i.severity, i.code, i.segment, i.field, i.component) for i in issues] == [
        ("W", 103, "SCH", 6, 3), ("W", 103, "AIS", 3, 3)]


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\n\r"])
def test_line_endings_are_normalised(ending):
    assert check_structure(siu().replace("\r", ending)) == check_structure(siu())


def test_mllp_framed_bytes_are_accepted():
    assert errors(check_structure(b"\x0b" + siu().encode() + b"\x1c\r")) == []


def test_custom_encoding_characters():
    text = siu().translate(str.maketrans("|^~\\&", "#$%@!"))
    assert errors(check_structure(text)) == []


def test_missing_sch_is_an_error_naming_sch():
    issues = errors(check_structure(siu(without("SCH"))))
    assert issues, "a SIU^S12 without SCH must be reported"
    sch = [i for i in issues if i.segment == "SCH"]
    assert sch and "SCH" in sch[0].text
    assert sch[0].code == 100


def test_missing_required_group_is_reported_by_its_first_segment():
    issues = errors(check_structure(siu([s for s in SIU_SEGMENTS if s[:3] not in ("RGS", "AIS", "AIL", "AIP")])))
    assert [i.segment for i in issues] == ["RGS"]
    assert "SIU_S12_RESOURCES" in issues[0].text


def test_sch_after_pid_is_out_of_order():
    segments = [SIU_SEGMENTS[0], SIU_SEGMENTS[2], SIU_SEGMENTS[1]] + SIU_SEGMENTS[3:]
    issues = errors(check_structure(siu(segments)))
    out_of_order = [i for i in issues if "out of order" in i.text]
    assert out_of_order and out_of_order[0].segment == "SCH"
    assert all(i.code == 100 for i in out_of_order)


def test_ais_before_rgs_is_out_of_order():
    # hl7apy's own parser quietly groups this; the structure walk must not.
    rgs, ais = SIU_SEGMENTS[4], SIU_SEGMENTS[5]
    segments = SIU_SEGMENTS[:4] + [ais, rgs] + SIU_SEGMENTS[6:]
    issues = errors(check_structure(siu(segments)))
    assert [(i.segment, i.code) for i in issues] == [("AIS", 100)]
    assert "out of order" in issues[0].text


def test_a_segment_repeated_too_often():
    segments = SIU_SEGMENTS[:2] + [SIU_SEGMENTS[1]] + SIU_SEGMENTS[2:]
    issues = errors(check_structure(siu(segments)))
    assert [(i.segment, i.sequence) for i in issues] == [("SCH", 2)]
    assert "repeats" in issues[0].text


def test_a_segment_that_does_not_belong_to_the_structure():
    segments = SIU_SEGMENTS[:3] + ["OBR|1||X1|CODE^Test^99PAS"] + SIU_SEGMENTS[3:]
    issues = errors(check_structure(siu(segments)))
    assert any(i.segment == "OBR" and "not part of" in i.text for i in issues)


def test_z_segment_is_a_warning_only():
    segments = SIU_SEGMENTS[:3] + ["ZPI|1|School: Example Primary"] + SIU_SEGMENTS[3:]
    issues = check_structure(siu(segments))
    assert errors(issues) == []
    assert [i.segment for i in issues if i.severity == "W" and i.segment.startswith("Z")] == ["ZPI"]


def test_unknown_segment_name_is_an_error():
    segments = SIU_SEGMENTS[:3] + ["QQQ|1|x"] + SIU_SEGMENTS[3:]
    issues = errors(check_structure(siu(segments)))
    assert [i.segment for i in issues] == ["QQQ"]


def test_unknown_message_type():
    text = siu().replace("SIU^S12^SIU_S12", "XYZ^Q99")
    issues = errors(check_structure(text))
    assert issues and issues[0].code == 200
    assert issues[0].segment == "MSH" and issues[0].field == 9


def test_unknown_trigger_event():
    issues = errors(check_structure(siu().replace("SIU^S12^SIU_S12", "SIU^S99")))
    assert [i.code for i in issues] == [201]


def test_unknown_message_structure_in_msh_9_3():
    issues = errors(check_structure(siu().replace("SIU^S12^SIU_S12", "SIU^S12^SIU_S99")))
    assert [i.code for i in issues] == [200]


def test_structure_from_code_and_event_when_msh_9_3_is_empty():
    assert errors(check_structure(siu().replace("SIU^S12^SIU_S12", "SIU^S12"))) == []
    assert errors(check_structure(siu().replace("SIU^S12^SIU_S12", "SIU^S15"))) == []


def test_adt_a04_without_msh_9_3_uses_the_adt_a01_structure():
    text = "\r".join([
        "MSH|^~\\&|PAS|RVH|FHIRGW|GATEWAY|20240501103000+0100||ADT^A04|MSG2|P|2.5",
        "EVN|A04|20240501103000+0100",
        f"PID|1||{NHS_NUMBER}^^^NHS^NH||TESTCHILD^Amelia||20170312|F",
        "PV1|1|O",
    ]) + "\r"
    issues = check_structure(text)
    assert errors(issues) == [], issues
    assert errors(check_structure(text.replace("PV1|1|O\r", ""))) != []  # PV1 is required in ADT_A01


def test_required_field_missing():
    segments = list(SIU_SEGMENTS)
    segments[1] = segments[1].replace("C1234567^BOOKER^Bea||||C1234567^BOOKER^Bea", "||||C1234567^BOOKER^Bea")
    issues = errors(check_structure(siu(segments)))
    assert [(i.segment, i.field, i.code) for i in issues] == [("SCH", 16, 101)]


def test_data_type_error_is_located():
    segments = list(SIU_SEGMENTS)
    segments[1] = segments[1].replace("|30|MIN|", "|thirty|MIN|")
    issues = errors(check_structure(siu(segments)))
    assert [(i.segment, i.field, i.code) for i in issues] == [("SCH", 9, 102)]
    assert "thirty" in issues[0].text


def test_data_type_error_in_a_repetition():
    segments = list(SIU_SEGMENTS)
    segments[2] = segments[2].replace("0113 496 0000^PRN^PH", "0113 496 0000^PRN^PH~^^^^^^notanumber")
    issues = check_structure(siu(segments))
    pid13 = [i for i in issues if i.segment == "PID" and i.field == 13]
    assert pid13 and pid13[0].repetition == 2


def test_fields_beyond_the_definition_are_warnings():
    segments = list(SIU_SEGMENTS)
    segments[4] = "RGS|1|A||||||extra"
    issues = check_structure(siu(segments))
    assert errors(issues) == []
    assert any(i.segment == "RGS" and i.field == 8 and i.severity == "W" for i in issues)


def test_unsupported_version_falls_back_to_2_5_with_a_warning():
    issues = check_structure(siu().replace("|P|2.5|", "|P|2.9.9|"))
    assert errors(issues) == []
    assert any(i.code == 203 and i.severity == "W" for i in issues)


def test_other_supported_versions_are_used():
    issues = check_structure(siu().replace("|P|2.5|", "|P|2.5.1|"))
    assert not any(i.code == 203 for i in issues)


@pytest.mark.parametrize("text", ["", "hello world", "\x00\xff\xfe garbage", "MSH|^~|broken", "PID|1||X\r",
                                  "MSH|^~\\&|A\rP!D|1\r", b"\x00\xff\x80 bytes"])
def test_garbage_gives_issues_not_exceptions(text):
    issues = check_structure(text)
    assert errors(issues), issues


def test_never_raises_even_when_hl7apy_does(monkeypatch):
    import hl7apy.parser

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(hl7apy.parser, "parse_field", explode)
    issues = check_structure(siu())
    assert issues and all(i.code == 102 for i in issues if i.severity == "E")

    monkeypatch.setattr(conformance, "_structure", explode)
    issues = check_structure(siu())
    assert any(i.code == 207 and "boom" in i.text for i in issues)


def test_random_mutations_never_raise():
    rng = random.Random(42)
    base = siu()
    for _ in range(25):
        chars = list(base)
        for _ in range(rng.randint(1, 8)):
            chars[rng.randrange(len(chars))] = rng.choice("|^~\\&\rXZ09 #")
        issues = check_structure("".join(chars))
        assert all(isinstance(i, Issue) and i.severity in ("E", "W", "I") for i in issues)
