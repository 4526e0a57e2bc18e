"""What is rejected (MappingError or E issues -> ACK AE) and what only warns (W -> AA with ERR)."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingError

ROOT = Path(__file__).resolve().parent.parent
BAD = ROOT / "tests" / "messages" / "bad"
MESSAGES = ROOT / "tests" / "messages"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def mapping_error(engine: MappingEngine, text: str | bytes) -> list:
    with pytest.raises(MappingError) as info:
        engine.map(parse_message(text))
    return info.value.issues


@pytest.mark.parametrize("name, code, segment, field", [
    ("siu_s12_no_sch.hl7", 100, "SCH", None),
    ("siu_s12_no_pid.hl7", 100, "PID", None),
    ("adt_a01_no_pid.hl7", 100, "PID", None),
    ("siu_s12_no_appointment_ids.hl7", 101, "SCH", 1),
    ("adt_a08_no_pid3.hl7", 101, "PID", 3),
    ("adt_a03_unsupported.hl7", 200, "MSH", 9),
])
def test_messages_that_cannot_be_mapped(engine, name, code, segment, field):
    issues = mapping_error(engine, (BAD / name).read_bytes())
    fatal = issues[-1]
    assert (fatal.severity, fatal.code, fatal.segment, fatal.field) == ("E", code, segment, field)
    assert segment in fatal.text or str(code) == "200"


@pytest.mark.parametrize("msh9", ["ORU^R01^ORU_R01", "SIU^S99", "ADT", "ACK^S12", ""])
def test_unsupported_types(engine, msh9):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("ADT^A28^ADT_A05", msh9)
    [issue] = mapping_error(engine, text)
    assert (issue.severity, issue.code, issue.segment, issue.field) == ("E", 200, "MSH", 9)
    assert "not supported" in issue.text


def test_pid_with_only_an_empty_identifier_is_rejected(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode()
    text = text.replace("RVH3334445^^^RVH^MR~9991860916^^^NHS^NH", '""')
    [issue] = mapping_error(engine, text)
    assert (issue.code, issue.segment, issue.field) == (101, "PID", 3)


def test_only_an_invalid_nhs_number_cannot_identify_a_patient(engine):
    text = (MESSAGES / "adt_a28_invalid_nhs_number.hl7").read_bytes().decode()
    text = text.replace("RVH5556667^^^RVH^MR~", "")
    issues = mapping_error(engine, text)
    assert [(i.severity, i.code) for i in issues] == [("W", 102), ("E", 101)]


def test_bad_tq1_date_is_an_error_in_the_result(engine):
    result = engine.map(parse_message((BAD / "siu_s12_bad_tq1_date.hl7").read_bytes()))
    [error] = result.errors
    assert (error.code, error.segment, error.field) == (102, "TQ1", 7)
    assert "20241345100000+0100" in error.text


@pytest.mark.parametrize("sch11, component", [
    ("^^M20^20240230100000^^R", 4),                  # start: 30 February
    ("^^M20^20240610143000^2024051410300^R", 5),     # end: odd length
])
def test_bad_sch11_dates_are_errors(engine, sch11, component):
    text = (MESSAGES / "siu_s12_v23_tq_lf.hl7").read_bytes().decode().replace("^^M20^20240610143000^^R", sch11)
    result = engine.map(parse_message(text))
    [error] = result.errors
    assert (error.code, error.segment, error.field, error.component) == (102, "SCH", 11, component)


def test_bad_msh7_is_a_warning_and_no_guard_time(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("20240507080000+0100", "2024")
    result = engine.map(parse_message(text))
    assert result.errors == []
    assert result.first("Patient").guard_time == "2024-01-01T00:00:00.000000Z"
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("20240507080000+0100", "NOW")
    result = engine.map(parse_message(text))
    assert [(i.severity, i.code, i.segment, i.field) for i in result.issues] == [("W", 102, "MSH", 7)]
    assert result.first("Patient").guard_time is None


def test_mapping_error_carries_earlier_warnings(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("20240507080000+0100", "NOW")
    text = text.replace("RVH3334445^^^RVH^MR~9991860916^^^NHS^NH", "")
    issues = mapping_error(engine, text)
    assert [(i.severity, i.code) for i in issues] == [("W", 102), ("E", 101)]
