"""ADT messages -> Patient (+ Encounter for A01/A04/A05, + merge intent for A40)."""

from pathlib import Path

import pytest

from gateway.hl7v2.parser import parse_message
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingResult

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = ROOT / "tests" / "messages"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
RVH_MRN = "https://fhir.gateway.example/id/rvh/patient"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def map_file(engine: MappingEngine, name: str) -> MappingResult:
    return engine.map(parse_message((MESSAGES / name).read_bytes()))


def test_a01_patient_and_encounter(engine):
    result = map_file(engine, "adt_a01_admit.hl7")
    assert result.message_type == "ADT^A01" and result.issues == []
    patient, encounter = result.first("Patient"), result.first("Encounter")
    assert [(m.system, m.value) for m in patient.matches] == [(NHS, "9995260182"), (RVH_MRN, "RVH7654321")]
    e = encounter.resource
    assert e["status"] == "in-progress"
    assert e["class"]["code"] == "IMP"
    assert e["subject"] == {"reference": patient.full_url}
    assert e["period"] == {"start": "2024-05-03T07:55:00+01:00"}
    assert encounter.matches[0].system == "https://fhir.gateway.example/id/rvh/encounter"
    assert encounter.matches[0].value == "V000123"
    by_url = {i.full_url: i for i in result.intents}
    assert by_url[e["location"][0]["location"]["reference"]].resource_type == "Location"
    attender = e["participant"][0]
    assert attender["type"][0]["coding"][0]["code"] == "ATND"
    assert by_url[attender["individual"]["reference"]].resource["identifier"][0]["value"] == "7012345"


@pytest.mark.parametrize("name, status, cls", [
    ("adt_a04_register_no_msh9_3.hl7", "arrived", "AMB"),
    ("adt_a05_preadmit.hl7", "planned", "PRENC"),
])
def test_registration_and_preadmission_encounters(engine, name, status, cls):
    encounter = map_file(engine, name).first("Encounter").resource
    assert (encounter["status"], encounter["class"]["code"]) == (status, cls)


def test_a01_without_visit_number_has_no_encounter(engine):
    text = (MESSAGES / "adt_a01_admit.hl7").read_bytes().decode().replace("V000123^^^RVH^VN", "")
    result = engine.map(parse_message(text))
    assert result.first("Encounter") is None
    assert result.first("Patient") is not None


def test_a01_unknown_patient_class_is_unknown_with_warning(engine):
    text = (MESSAGES / "adt_a01_admit.hl7").read_bytes().decode().replace("PV1|1|I|", "PV1|1|Q|")
    result = engine.map(parse_message(text))
    assert result.first("Encounter").resource["class"]["code"] == "UNK"
    assert [(i.severity, i.code, i.segment, i.field) for i in result.issues] == [("W", 103, "PV1", 2)]


def test_a08_keeps_every_repetition(engine):
    result = map_file(engine, "adt_a08_update_repetitions_escapes.hl7")
    assert result.message_type == "ADT^A08"
    p = result.first("Patient").resource
    assert [i["value"] for i in p["identifier"]] == ["RVH2223334", "9990166137", "NG445566"]
    assert [n["use"] for n in p["name"]] == ["official", "nickname"]
    assert [a.get("use", a.get("type")) for a in p["address"]] == ["home", "postal"]
    assert [(t["system"], t.get("use")) for t in p["telecom"]] == [
        ("phone", "home"), ("phone", "mobile"), ("email", None), ("phone", "work")]
    matches = [(m.system, m.value) for m in result.first("Patient").matches]
    assert matches == [(NHS, "9990166137"), (RVH_MRN, "RVH2223334"),
                       ("https://fhir.gateway.example/id/northgate/patient", "NG445566")]


def test_a08_escaped_characters(engine):
    p = map_file(engine, "adt_a08_update_repetitions_escapes.hl7").first("Patient").resource
    assert p["name"][0] == {"use": "official", "family": "O'NEILL", "given": ["SIOBHÁN"]}
    assert p["address"][0]["line"] == ["Rose & Crown Cottages", "Flat 2"]


def test_a08_gp_without_authority_uses_sds_user_id(engine):
    result = map_file(engine, "adt_a08_update_repetitions_escapes.hl7")
    gp = next(i for i in result.intents if i.resource_type == "Practitioner")
    assert gp.resource["identifier"] == [{"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": "G7654321"}]


@pytest.mark.parametrize("name", ["adt_a28_add_person.hl7", "adt_a31_update_person.hl7"])
def test_person_information_messages(engine, name):
    result = map_file(engine, name)
    assert [i.resource_type for i in result.intents] == ["Patient"]
    p = result.first("Patient").resource
    assert p["birthDate"] == "2022-01-01" and p["gender"] == "female"


def test_invalid_nhs_number_is_kept_locally_and_not_matched(engine):
    result = map_file(engine, "adt_a28_invalid_nhs_number.hl7")
    patient = result.first("Patient")
    systems = [i["system"] for i in patient.resource["identifier"]]
    assert NHS not in systems
    assert "https://fhir.gateway.example/id/rvh/nhs-number-unverified" in systems
    assert [(m.system, m.value) for m in patient.matches] == [(RVH_MRN, "RVH5556667")]
    [issue] = result.issues
    assert (issue.severity, issue.code, issue.segment, issue.field, issue.repetition) == ("W", 102, "PID", 3, 2)
    assert "9434765918" in issue.text and "check digit" in issue.text


def test_a40_merge(engine):
    result = map_file(engine, "adt_a40_merge.hl7")
    survivor = result.first("Patient")
    merged = next(i for i in result.intents if i.action == "merge-into")
    assert survivor.action == "upsert" and survivor.key == "patient"
    assert merged.merge_target == survivor.full_url
    assert [(m.system, m.value) for m in merged.matches] == [(RVH_MRN, "RVH7777777")]
    assert merged.resource["active"] is False
    assert merged.resource["link"] == [{"type": "replaced-by", "other": {"reference": survivor.full_url}}]
    assert result.intents.index(survivor) < result.intents.index(merged)


def test_a40_without_mrg1_is_rejected(engine):
    from gateway.mapping.model import MappingError
    text = (MESSAGES / "adt_a40_merge.hl7").read_bytes().decode().replace("MRG|RVH7777777^^^RVH^MR|", "MRG||")
    with pytest.raises(MappingError) as info:
        engine.map(parse_message(text))
    assert [(i.code, i.segment, i.field) for i in info.value.issues] == [(101, "MRG", 1)]


def test_a40_with_two_patient_groups_is_an_error(engine):
    text = (MESSAGES / "adt_a40_merge.hl7").read_bytes().decode()
    pid, mrg = [line for line in text.split("\r") if line.startswith(("PID", "MRG"))]
    result = engine.map(parse_message(text + pid + "\r" + mrg + "\r"))
    assert any(i.severity == "E" and i.segment == "PID" for i in result.issues)


def test_deceased_and_birth_order(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode()
    pid = next(line for line in text.split("\r") if line.startswith("PID"))
    fields = pid.split("|") + [""] * 31
    fields[24], fields[25], fields[29], fields[30] = "Y", "2", "20240101120000+0000", "Y"
    result = engine.map(parse_message(text.replace(pid, "|".join(fields[:31]))))
    p = result.first("Patient").resource
    assert p["multipleBirthInteger"] == 2 and "multipleBirthBoolean" not in p
    assert p["deceasedDateTime"] == "2024-01-01T12:00:00+00:00" and "deceasedBoolean" not in p


def test_bad_birth_date_is_a_warning(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("|20220101|", "|20221301|")
    result = engine.map(parse_message(text))
    assert "birthDate" not in result.first("Patient").resource
    assert [(i.severity, i.code, i.segment, i.field) for i in result.issues] == [("W", 102, "PID", 7)]


def test_unknown_gender_is_a_warning(engine):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("|20220101|F|", "|20220101|X|")
    result = engine.map(parse_message(text))
    assert "gender" not in result.first("Patient").resource
    assert [(i.severity, i.code, i.field) for i in result.issues] == [("W", 103, 8)]


@pytest.mark.parametrize("code, gender", [("M", "male"), ("F", "female"), ("O", "other"), ("U", "unknown"),
                                          ("A", "other"), ("N", "unknown"), ("f", "female")])
def test_gender_map(engine, code, gender):
    text = (MESSAGES / "adt_a28_add_person.hl7").read_bytes().decode().replace("|20220101|F|", f"|20220101|{code}|")
    assert engine.map(parse_message(text)).first("Patient").resource["gender"] == gender
