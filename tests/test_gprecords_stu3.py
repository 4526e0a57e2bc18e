"""STU3 -> R4, field by field (no database), and FHIR version / shape detection."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from gateway import codes
from gateway.gprecords import detect, stu3
from gateway.gprecords.codelists import marker_lists

GP = Path(__file__).parent / "gp"


def entries() -> dict[str, dict]:
    bundle = json.loads((GP / "gpconnect_stu3_structured.json").read_text())
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}


def converted(key: str) -> dict:
    out = stu3.convert(entries()[key]).resource
    get_fhir_model_class(out["resourceType"]).model_validate(out)  # valid R4
    return out


def test_condition():
    c = converted("Condition/20")
    assert c["clinicalStatus"] == {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]}
    assert c["verificationStatus"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
    assert c["category"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/condition-category"
    assert c["encounter"] == {"reference": "Encounter/10"} and "context" not in c
    assert c["recordedDate"] == "2017-06-01" and "assertedDate" not in c
    assert "meta" not in c  # STU3 profiles are not R4 profiles
    resolved = converted("Condition/22")
    assert "abatementBoolean" not in resolved and "verificationStatus" not in resolved  # 'unknown': no R4 code
    assert resolved["clinicalStatus"]["coding"][0]["code"] == "resolved"


def test_referral_request_becomes_service_request():
    s = converted("ReferralRequest/40")
    assert s["resourceType"] == "ServiceRequest" and s["status"] == "active" and s["intent"] == "order"
    assert s["code"]["coding"][0]["code"] == "183519002"  # serviceRequested
    assert s["category"][0]["coding"][0]["code"] == "3457005"  # type
    assert s["requester"] == {"reference": "Practitioner/3"}  # requester.agent
    assert s["performer"] == [{"display": "Riverside Hospital paediatrics"}]  # recipient
    assert s["performerType"] == {"text": "Paediatrics"}  # specialty
    assert s["encounter"] == {"reference": "Encounter/10"}
    assert s["note"] == [{"text": "Increasing seizures; please review"}]  # description
    assert stu3.convert({**entries()["ReferralRequest/40"], "status": "cancelled"}).resource["status"] == "revoked"
    assert stu3.convert({**entries()["ReferralRequest/40"], "status": "suspended"}).resource["status"] == "on-hold"


def test_appointment_keeps_noshow_and_maps_changed_elements():
    a = converted("Appointment/30")
    assert a["status"] == "noshow"
    assert a["serviceCategory"] == [{"text": "General practice"}]
    assert a["reasonCode"] == [{"text": "Review"}]
    cancelled = converted("Appointment/31")
    assert cancelled["cancelationReason"] == {"text": "Parent cancelled: clash with school"}
    assert "extension" not in cancelled


def test_encounter_observation_flag():
    e = converted("Encounter/10")
    assert e["reasonCode"] == [{"text": "Review of seizures"}]
    assert e["class"]["code"] == "UNK"  # R4 requires class; STU3 GP Connect omitted it
    o = converted("Observation/60")
    assert o["encounter"] == {"reference": "Encounter/10"} and o["note"] == [{"text": "Not brought to asthma clinic"}]
    assert o["interpretation"] == [{"text": "n/a"}]
    f = converted("Flag/50")
    assert f["category"] == [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                          "code": "safety"}]}]


def test_patient_and_directory_resources_copy_through():
    p = converted("Patient/2")
    assert p["identifier"][0]["value"] == "9990041016" and p["managingOrganization"] == {"reference": "Organization/7"}
    assert converted("PractitionerRole/4")["practitioner"] == {"reference": "Practitioner/3"}
    assert stu3.convert(entries()["List/70"]).resource is None  # not kept: skipped by the importer


def test_mapping_file_is_checked(tmp_path):
    bad = tmp_path / "resources.yaml"
    bad.write_text("Condition:\n  steps: [no-such-step]\n")
    with pytest.raises(stu3.Stu3ConfigError, match="no-such-step"):
        stu3.load_rules(bad)
    bad.write_text("Condition:\n  renamez: {a: b}\n")
    with pytest.raises(stu3.Stu3ConfigError, match="renamez"):
        stu3.load_rules(bad)


def test_version_detection():
    bundle = json.loads((GP / "gpconnect_stu3_structured.json").read_text())
    assert detect.version_of([e["resource"] for e in bundle["entry"]] + [bundle], None, "x") == detect.STU3
    r4 = json.loads((GP / "uk_core_r4_collection.json").read_text())
    assert detect.version_of([e["resource"] for e in r4["entry"]], None, "x") == detect.R4
    with pytest.raises(detect.ImportFormatError, match="mixes"):
        detect.version_of([{"resourceType": "ReferralRequest"}, {"resourceType": "ServiceRequest"}], None, "x")
    with pytest.raises(detect.ImportFormatError, match="DSTU2"):
        detect.version_of([{"resourceType": "MedicationOrder"}], None, "x")
    assert detect.decide_version(Counter({detect.R4: 30, detect.STU3: 1}), None, "x", tolerant=True) == detect.R4
    assert detect.normalise_declared("3.0.2") == detect.STU3 and detect.normalise_declared("4.0.1") == detect.R4


def test_shape_detection(tmp_path):
    assert detect.shape_of(GP / "bulk").kind == "folder"
    assert detect.shape_of(GP / "gpconnect_stu3_structured.json").kind == "bundle"
    lines = tmp_path / "export.json"
    lines.write_text('{"resourceType":"Patient"}\n{"resourceType":"Patient"}\n')
    assert detect.shape_of(lines).kind == "ndjson"
    junk = tmp_path / "junk.json"
    junk.write_text("MSH|^~\\&|...")
    with pytest.raises(detect.ImportFormatError, match="not FHIR JSON"):
        detect.shape_of(junk)


def test_marker_code_lists_and_flag_codesystem():
    lists = marker_lists()
    assert (codes.SNOMED, "342191000000101") in lists[codes.FLAG_CHILD_PROTECTION_PLAN].codes
    assert (codes.SNOMED, "764841000000100") in lists[codes.FLAG_LOOKED_AFTER].codes
    assert (codes.SNOMED, "836881000000105") in lists[codes.FLAG_SAFEGUARDING_CONCERN].codes
    assert lists[codes.FLAG_COMPLEX_NEEDS].codes
    system = json.loads((Path(__file__).parent.parent / "profiles" / "CodeSystem-safeguarding-flag.json").read_text())
    assert system["url"] == codes.FLAG_CODES
    defined = {c["code"] for c in system["concept"]}
    used = {v for k, v in vars(codes).items() if k.startswith("FLAG_") and isinstance(v, str)
            and not v.startswith("http")}
    assert used <= defined, used - defined
