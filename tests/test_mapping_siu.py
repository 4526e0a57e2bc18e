"""SIU scheduling messages -> Patient + Appointment intents (one test per event and rule)."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingResult

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
CANCEL_REASON = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def map_file(engine: MappingEngine, name: str) -> MappingResult:
    return engine.map(parse_message((MESSAGES / name).read_bytes()))


def load(name: str) -> str:
    """A sample message as text, segment separators untouched (read_text would turn CR into LF)."""
    return (MESSAGES / name).read_bytes().decode("utf-8")


def set_field(text: str, segment: str, field: int, value: str) -> str:
    """The message with field ``segment-field`` (first such segment) replaced by ``value``."""
    lines = text.split("\r")
    index = field - 1 if segment == "MSH" else field  # MSH-1 is the separator itself
    for i, line in enumerate(lines):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            fields += [""] * (index + 1 - len(fields))
            fields[index] = value
            lines[i] = "|".join(fields)
            return "\r".join(lines)
    raise AssertionError(f"no {segment} segment")


def map_text(engine: MappingEngine, text: str) -> MappingResult:
    return engine.map(parse_message(text))


def appointment(result: MappingResult) -> dict:
    return result.first("Appointment").resource


def test_s12_full_message(engine):
    result = map_file(engine, "siu_s12_v251_full.hl7")
    assert result.message_type == "SIU^S12"
    assert result.issues == []
    appt = result.first("Appointment")
    patient = result.first("Patient")
    r = appt.resource
    assert r["status"] == "booked"
    assert r["start"] == "2024-05-14T10:00:00+01:00" and r["end"] == "2024-05-14T10:30:00+01:00"
    assert r["minutesDuration"] == 30
    assert r["comment"] == "Please bring the child's red book.\nInterpreter (Polish) booked."
    assert r["appointmentType"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0277", "code": "FOLLOWUP", "display": "Follow-up"}
    assert r["reasonCode"][0]["coding"][0]["code"] == "CHECKUP"
    assert r["serviceType"][0]["coding"][0]["code"] == "PAEDCL"
    assert "cancelationReason" not in r  # SCH-6 on a booking is not a cancellation reason
    # The patient is the first participant, by reference to the Patient intent.
    assert r["participant"][0] == {"actor": {"reference": patient.full_url}, "required": "required",
                                   "status": "accepted"}
    assert all(p["status"] in ("accepted",) for p in r["participant"])


def test_s12_identifiers_and_matches_filler_first(engine):
    appt = map_file(engine, "siu_s12_v251_full.hl7").first("Appointment")
    assert [(m.system, m.value) for m in appt.matches] == [
        ("https://fhir.gateway.example/id/careflow_pas/appointment", "FA-778812"),
        ("urn:oid:2.16.840.1.999.1.1", "PL-20240501-001"),
    ]
    types = {i["value"]: i["type"]["coding"][0]["code"] for i in appt.resource["identifier"]}
    assert types == {"FA-778812": "FILL", "PL-20240501-001": "PLAC"}


def test_s12_participants_are_intents_matched_by_identifier(engine):
    result = map_file(engine, "siu_s12_v251_full.hl7")
    by_url = {i.full_url: i for i in result.intents}
    actors = [p["actor"] for p in appointment(result)["participant"]]
    referenced = [by_url[a["reference"]] for a in actors if "reference" in a]
    kinds = sorted(i.resource_type for i in referenced)
    assert kinds == ["HealthcareService", "Location", "Patient", "Practitioner", "Practitioner"]
    clinician = next(i for i in referenced if i.resource["identifier"][0]["value"] == "7012345")
    assert clinician.matches[0].system == "https://fhir.hl7.org.uk/Id/gmc-number"
    location = next(i for i in referenced if i.resource_type == "Location")
    assert location.matches[0].value == "MAIN/1/PAEDOPD/ROOM3"
    # AIG: a general resource (room) as a logical reference with its type.
    room = next(p for p in appointment(result)["participant"] if "identifier" in p["actor"])
    assert room["actor"]["display"] == "Consulting room 3"
    assert room["type"][0]["coding"][0]["code"] == "RM"
    # AIP-4 resource type is the clinician participant's type.
    aip = next(p for p in appointment(result)["participant"] if p["actor"].get("display") == "DR ANIKA PATEL")
    assert aip["type"][0]["coding"][0]["code"] == "CON" and aip["required"] == "required"


def test_s12_patient_from_pid_and_pd1(engine):
    result = map_file(engine, "siu_s12_v251_full.hl7")
    patient = result.first("Patient")
    assert [(m.system, m.value) for m in patient.matches] == [
        (NHS, "9434765919"), ("https://fhir.gateway.example/id/rvh/patient", "RVH1234567")]
    gp_refs = [g["reference"] for g in patient.resource["generalPractitioner"]]
    by_url = {i.full_url: i for i in result.intents}
    assert [by_url[u].resource_type for u in gp_refs] == ["Organization", "Practitioner"]
    assert by_url[gp_refs[0]].resource["identifier"][0] == {
        "system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y12345"}
    assert by_url[gp_refs[1]].resource["identifier"][0]["system"] == "https://fhir.hl7.org.uk/Id/gmp-number"


def test_intent_order_puts_referenced_resources_first(engine):
    types = [i.resource_type for i in map_file(engine, "siu_s12_v251_full.hl7").intents]
    assert types.index("Patient") < types.index("Appointment")
    assert max(types.index("Practitioner"), types.index("Location"), types.index("Organization")) < \
        types.index("Patient")


def test_guard_time_is_msh7_in_utc_on_every_intent(engine):
    result = map_file(engine, "siu_s12_v251_full.hl7")
    assert {i.guard_time for i in result.intents} == {"2024-05-01T08:30:00.000000Z"}


def test_merge_policy(engine):
    result = map_file(engine, "siu_s12_v251_full.hl7")
    assert result.first("Patient").merge == {"identifier": "union"}
    assert result.first("Appointment").merge == {"identifier": "union", "participant": "union"}


def test_resources_have_no_id_or_meta(engine):
    for intent in map_file(engine, "siu_s12_v251_full.hl7").intents:
        assert "id" not in intent.resource and "meta" not in intent.resource
        assert intent.resource["resourceType"] == intent.resource_type


def test_s13_reschedule_updates_times(engine):
    r = appointment(map_file(engine, "siu_s13_reschedule_crlf.hl7"))
    assert r["status"] == "booked"
    assert (r["start"], r["end"]) == ("2024-05-21T14:00:00+01:00", "2024-05-21T14:30:00+01:00")


def test_s14_timing_from_ais_with_duration(engine):
    result = map_file(engine, "siu_s14_modify_ais_timing.hl7")
    r = appointment(result)
    assert r["start"] == "2024-05-21T11:00:00+01:00"     # AIS-4, no offset: read as London time
    assert r["end"] == "2024-05-21T11:45:00+01:00"       # + AIS-7 45 MIN
    assert r["minutesDuration"] == 45
    assert result.issues == []


def test_s15_cancelled_by_patient(engine):
    r = appointment(map_file(engine, "siu_s15_cancel_by_patient.hl7"))
    assert r["status"] == "cancelled"
    reason = r["cancelationReason"]
    assert reason["coding"][0] == {"system": CANCEL_REASON, "code": "pat", "display": "Patient"}
    assert reason["coding"][1]["code"] == "PAT" and reason["coding"][1]["display"] == "Cancelled by parent"


def test_s15_cancelled_by_provider_without_sch25(engine):
    r = appointment(map_file(engine, "siu_s15_cancel_by_provider.hl7"))
    assert r["status"] == "cancelled"
    assert r["cancelationReason"]["coding"][0]["code"] == "prov"
    assert r["cancelationReason"]["coding"][1]["code"] == "HOSP"


def test_s15_unknown_reason_keeps_original_coding_with_warning(engine):
    result = map_text(engine, set_field(load("siu_s15_cancel_by_patient.hl7"), "SCH", 6, "ZZ^Snow^L"))
    reason = appointment(result)["cancelationReason"]
    assert [c["code"] for c in reason["coding"]] == ["ZZ"]
    [issue] = result.issues
    assert (issue.severity, issue.code, issue.segment, issue.field) == ("W", 103, "SCH", 6)


def test_s15_ignores_a_booked_sch25(engine):
    text = set_field(load("siu_s15_cancel_by_patient.hl7"), "SCH", 25, "Booked")
    assert appointment(map_text(engine, text))["status"] == "cancelled"


def test_s15_keeps_a_deleted_sch25(engine):
    text = set_field(load("siu_s15_cancel_by_patient.hl7"), "SCH", 25, "Deleted")
    assert appointment(map_text(engine, text))["status"] == "entered-in-error"


def test_s17_is_a_delete_intent(engine):
    result = map_file(engine, "siu_s17_delete.hl7")
    appt = result.first("Appointment")
    assert appt.action == "delete"
    assert appt.matches[0].value == "FA-778812"
    assert result.first("Patient").action == "upsert"


def test_s26_is_noshow(engine):
    r = appointment(map_file(engine, "siu_s26_noshow.hl7"))
    assert r["status"] == "noshow"
    assert "cancelationReason" not in r


def test_s26_forces_noshow_over_sch25(engine):
    text = set_field(load("siu_s26_noshow.hl7"), "SCH", 25, "Booked")
    assert appointment(map_text(engine, text))["status"] == "noshow"


def test_noshow_in_ais10_wins(engine):
    assert appointment(map_file(engine, "siu_s14_ais_noshow.hl7"))["status"] == "noshow"


@pytest.mark.parametrize("code, status", [
    ("Pending", "pending"), ("Waitlist", "waitlist"), ("Booked", "booked"), ("Started", "checked-in"),
    ("Complete", "fulfilled"), ("Cancelled", "cancelled"), ("Deleted", "entered-in-error"),
    ("Noshow", "noshow"), ("NOSHOW", "noshow"), ("booked", "booked"),
])
def test_sch25_status_map(engine, code, status):
    text = set_field(load("siu_s14_modify_ais_timing.hl7"), "SCH", 25, code)
    assert appointment(map_text(engine, text))["status"] == status


def test_s12_without_sch25_is_booked(engine):
    text = set_field(load("siu_s14_modify_ais_timing.hl7"), "SCH", 25, "")
    text = set_field(text, "MSH", 9, "SIU^S12^SIU_S12")
    assert appointment(map_text(engine, text))["status"] == "booked"


def test_date_only_start_goes_to_requested_period_with_warning(engine):
    result = map_file(engine, "siu_s12_date_only_start.hl7")
    r = appointment(result)
    assert "start" not in r and "end" not in r
    assert r["requestedPeriod"] == [{"start": "2024-05-20"}]
    [issue] = result.issues
    assert (issue.severity, issue.code, issue.segment, issue.field) == ("W", 102, "TQ1", 7)


def test_start_without_end_or_duration_warns(engine):
    text = set_field(load("siu_s12_v251_full.hl7"), "TQ1", 8, "")
    text = set_field(set_field(text, "SCH", 9, ""), "SCH", 10, "")
    text = set_field(text, "AIS", 7, "")
    result = map_text(engine, text)
    r = appointment(result)
    assert r["start"] == "2024-05-14T10:00:00+01:00" and "end" not in r
    assert [(i.severity, i.code) for i in result.issues] == [("W", 101)]


def test_end_before_start_is_dropped_with_warning(engine):
    text = load("siu_s13_reschedule_crlf.hl7").replace("\r\n", "\r")
    result = map_text(engine, set_field(text, "TQ1", 8, "20240521130000+0100"))
    r = appointment(result)
    assert r["end"] == "2024-05-21T14:30:00+01:00"  # recomputed from SCH-9 (30 minutes)
    assert any(i.code == 102 and i.field == 8 and i.segment == "TQ1" for i in result.issues)


def test_every_repetition_of_nte3_and_every_nte_is_kept(engine):
    text = load("siu_s12_v251_full.hl7").replace(
        "Interpreter (Polish) booked.", "Interpreter (Polish) booked.~Second line\rNTE|2||Third note")
    assert appointment(map_text(engine, text))["comment"] == \
        "Please bring the child's red book.\nInterpreter (Polish) booked.\nSecond line\nThird note"
