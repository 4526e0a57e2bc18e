"""Dialects: HL7 versions, timing styles, MSH-9 forms, line endings, escapes, sender overrides."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingResult

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def load(name: str) -> str:
    return (MESSAGES / name).read_bytes().decode("utf-8")


def map_text(engine: MappingEngine, text: str) -> MappingResult:
    return engine.map(parse_message(text))


def test_v23_message_with_tq_in_sch11_and_lf_endings(engine):
    text = load("siu_s12_v23_tq_lf.hl7")
    assert "\r" not in text and text.count("\n") == 6
    result = map_text(engine, text)
    assert result.message_type == "SIU^S12"   # MSH-9 has no third component
    assert result.issues == []
    appt = result.first("Appointment").resource
    # SCH-11: ^^M20^20240610143000 -> start read in London time (BST), end = start + 20 minutes
    assert appt["start"] == "2024-06-10T14:30:00+01:00"
    assert appt["end"] == "2024-06-10T14:50:00+01:00"
    assert appt["minutesDuration"] == 20
    # v2.3 senders often put the NHS number in PID-2
    patient = result.first("Patient")
    assert patient.matches[0].system == NHS and patient.matches[0].value == "9990308241"


def test_v251_and_v23_build_the_same_shape(engine):
    new = map_text(engine, load("siu_s12_v251_full.hl7")).first("Appointment").resource
    old = map_text(engine, load("siu_s12_v23_tq_lf.hl7")).first("Appointment").resource
    for key in ("identifier", "status", "start", "end", "minutesDuration", "participant", "serviceType"):
        assert key in new and key in old


def test_tq1_wins_over_sch11_and_ais4(engine):
    text = load("siu_s12_v251_full.hl7")
    sch = next(line for line in text.split("\r") if line.startswith("SCH|"))
    fields = sch.split("|")
    fields[11] = "^^M15^20240514090000+0100^20240514091500+0100"
    result = map_text(engine, text.replace(sch, "|".join(fields)))
    appt = result.first("Appointment").resource
    assert appt["start"] == "2024-05-14T10:00:00+01:00" and appt["end"] == "2024-05-14T10:30:00+01:00"


def test_sch11_wins_over_ais4_when_there_is_no_tq1(engine):
    text = load("siu_s12_v251_full.hl7")
    lines = [line for line in text.split("\r") if not line.startswith("TQ1|")]
    sch = lines[1].split("|")
    sch[11] = "^^^20240514090000+0100^20240514091500+0100"
    lines[1] = "|".join(sch)
    appt = map_text(engine, "\r".join(lines)).first("Appointment").resource
    assert appt["start"] == "2024-05-14T09:00:00+01:00" and appt["end"] == "2024-05-14T09:15:00+01:00"
    assert appt["minutesDuration"] == 15


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_line_endings_do_not_matter(engine, ending):
    text = load("siu_s12_v251_full.hl7").replace("\r", ending)
    result = map_text(engine, text)
    assert result.first("Appointment").resource["status"] == "booked"
    assert len(result.intents) == 8


def test_crlf_sample(engine):
    text = load("siu_s13_reschedule_crlf.hl7")
    assert "\r\n" in text
    assert map_text(engine, text).message_type == "SIU^S13"


@pytest.mark.parametrize("msh9, expected", [("ADT^A08", "ADT^A08"), ("ADT^A08^ADT_A01", "ADT^A08"),
                                            ("adt^a08", "ADT^A08")])
def test_msh9_forms(engine, msh9, expected):
    text = load("adt_a28_add_person.hl7").replace("ADT^A28^ADT_A05", msh9)
    assert map_text(engine, text).message_type == expected


def test_multiple_pid3_repetitions_all_kept(engine):
    result = map_text(engine, load("adt_a08_update_repetitions_escapes.hl7"))
    assert len(result.first("Patient").resource["identifier"]) == 3


def test_other_encoding_characters(engine):
    text = load("adt_a28_add_person.hl7").replace("^", "#").replace("MSH|#~\\&|", "MSH|#~\\&|")
    patient = map_text(engine, text).first("Patient").resource
    assert patient["name"][0]["family"] == "NOWAK"
    assert patient["identifier"][1]["system"] == NHS


def test_unknown_status_without_override_is_an_error(engine):
    result = map_text(engine, (MESSAGES / "bad" / "siu_s12_unknown_status.hl7").read_bytes().decode())
    [error] = result.errors
    assert (error.code, error.segment, error.field) == (103, "SCH", 25)
    assert "ARRIVED" in error.text and "SCH-25" in error.text
    # The invalid code never reaches the resource.
    assert result.first("Appointment").resource["status"] == "booked"


def test_unknown_status_with_sender_override(engine):
    result = map_text(engine, load("siu_s14_riverside_arrived_zap.hl7"))
    assert result.errors == [] and result.issues == []
    assert result.first("Appointment").resource["status"] == "arrived"


def test_override_applies_only_to_its_sender(engine):
    text = load("siu_s14_riverside_arrived_zap.hl7").replace("RIVERSIDE_PAS", "SOMEONE_ELSE")
    result = map_text(engine, text)
    assert [(e.code, e.field) for e in result.errors] == [(103, 25)]
    assert "extension" not in result.first("Appointment").resource  # no ZAP mapping either


def test_z_segment_override(engine):
    appt = map_text(engine, load("siu_s14_riverside_arrived_zap.hl7")).first("Appointment").resource
    assert appt["extension"] == [{
        "url": "https://fhir.gateway.example/StructureDefinition/booking-channel",
        "valueCodeableConcept": {"coding": [{"system": "https://fhir.gateway.example/CodeSystem/riverside/l",
                                             "code": "PORTAL", "display": "Booked via patient portal"}]},
    }]
    assert appt["patientInstruction"] == "Please arrive 10 minutes early."


def test_sender_namespace_and_local_cancellation_reason(engine):
    result = map_text(engine, load("siu_s15_riverside_local_reason.hl7"))
    appt = result.first("Appointment")
    assert appt.matches[0].system == "https://fhir.gateway.example/id/riverside/appointment"
    assert appt.resource["cancelationReason"]["coding"][0]["code"] == "pat"
    assert result.issues == []


def test_local_times_follow_the_configured_zone():
    engine = MappingEngine(ROOT / "mappings", default_timezone="UTC")
    appt = map_text(engine, load("siu_s12_v23_tq_lf.hl7")).first("Appointment")
    assert appt.resource["start"] == "2024-06-10T14:30:00+00:00"
    assert appt.guard_time == "2024-05-02T14:15:00.000000Z"
