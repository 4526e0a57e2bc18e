"""DG1 in ADT messages -> one Condition per diagnosis (the IG's DG1[Condition]); a listed
code marks the child (complex-needs marker Flag).  Mapping units field by field, then end to
end over a real MLLP socket and FHIR HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from gateway import codes
from gateway.api.validation import validate_resource
from gateway.hl7v2.ack import ack_code_of
from gateway.hl7v2.parser import parse_message
from gateway.ingest.mllp_client import MllpClient
from gateway.mapping.engine import MappingEngine
from gateway.mapping.model import MappingResult
from gateway.synthetic import adt_message, make_child

ROOT = Path(__file__).resolve().parent.parent
SCT = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CEREBRAL_PALSY = "128188000"  # listed in mappings/complex-needs.yaml (complex medical needs)
MARKER = f"{codes.FLAG_CODES}|{codes.FLAG_COMPLEX_NEEDS}"


@pytest.fixture(scope="module")
def engine() -> MappingEngine:
    return MappingEngine(ROOT / "mappings")


def with_dg1(event: str, *dg1: str, control_id: str = "D1", sent: datetime | None = None, child=None,
             pv1: str | None = None) -> str:
    """A synthetic ADT message (gateway.synthetic) with these DG1 segments appended."""
    message = adt_message(child or make_child(41), event, control_id=control_id, sent=sent)
    if pv1 is not None:
        message = message.replace("PV1|1|O\r", pv1 + "\r")
    return message + "".join(seg + "\r" for seg in dg1)


def dg1(**fields: str) -> str:
    """A DG1 segment from field numbers: dg1(f1="1", f3="...") -- no pipe counting."""
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join(["DG1"] + [numbered.get(n, "") for n in range(1, max(numbered) + 1)])


def mapped(engine: MappingEngine, message: str) -> MappingResult:
    return engine.map(parse_message(message))


def conditions(result: MappingResult) -> list:
    return [i for i in result.intents if i.resource_type == "Condition"]


# -- mapping, field by field ------------------------------------------------------------------
def test_every_mapped_dg1_field(engine):
    result = mapped(engine, with_dg1(
        "A01",
        dg1(f1="1", f2="I10", f3="128188000^Cerebral palsy^SCT", f4="Cerebral palsy (CP)", f5="20230105", f6="F",
            f15="1", f16="C123^Jones^Sam^^^Dr^^^GMC~C999^Other", f19="20230106101500", f20="DX-77^RXPAS",
            f21="A"),
        pv1="PV1|1|I|||||||||||||||||V900"))
    assert result.errors == [] and result.issues == []
    [intent] = conditions(result)
    patient, encounter = result.first("Patient"), result.first("Encounter")
    assert intent.key == "diagnosis"
    assert [(m.system, m.value) for m in intent.matches] == [
        ("https://fhir.gateway.example/id/rxpas/diagnosis", "DX-77")]          # DG1-20
    assert intent.same == {}                                                   # identified by DG1-20
    c = intent.resource
    assert c["subject"] == {"reference": patient.full_url}
    assert c["encounter"] == {"reference": encounter.full_url}
    assert c["category"] == [{"coding": [{"system": CATEGORY, "code": "encounter-diagnosis",
                                          "display": "Encounter Diagnosis"}]}]
    assert c["code"] == {"coding": [{"system": SCT, "code": CEREBRAL_PALSY, "display": "Cerebral palsy"}],
                         "text": "Cerebral palsy (CP)"}                         # DG1-3, DG1-4
    assert c["onsetDateTime"] == "2023-01-05"                                  # DG1-5
    assert c["recordedDate"] == "2023-01-06T10:15:00+00:00"                    # DG1-19 (GMT in January)
    assert c["verificationStatus"] == {"coding": [{"system": VER_STATUS, "code": "confirmed",
                                                   "display": "Confirmed"}]}   # DG1-6 F
    asserter = next(i for i in result.intents if i.full_url == c["asserter"]["reference"])  # DG1-16
    assert asserter.resource_type == "Practitioner"
    assert asserter.resource["identifier"] == [{"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "C123"}]
    assert c["asserter"]["display"] == "Dr Sam Jones"
    assert set(c) == {"resourceType", "subject", "encounter", "category", "identifier", "code", "onsetDateTime",
                      "recordedDate", "verificationStatus", "asserter"}
    validate_resource("Condition", c)  # valid R4 (structure and required bindings)


def test_each_dg1_is_its_own_condition_and_errors_name_their_dg1(engine):
    result = mapped(engine, with_dg1(
        "A08",
        "DG1|1||G80.9^Cerebral palsy, unspecified^I10||20230105|W",
        "DG1|2|||Feeding difficulty||A",
        "DG1|3||84757009^Epilepsy^SNOMEDCT||2023-01-05|ZZ",
    ))
    assert result.errors == []
    first, second, third = (i.resource for i in conditions(result))
    assert first["code"]["coding"] == [{"system": ICD10, "code": "G80.9", "display": "Cerebral palsy, unspecified"}]
    assert first["verificationStatus"]["coding"][0]["code"] == "provisional"          # W working
    assert first["recordedDate"] == "2023-01-05"          # no DG1-19: the diagnosis date
    assert "encounter" not in first                       # A08: no Encounter
    assert second["code"] == {"text": "Feeding difficulty"}                           # DG1-4 alone
    assert second["verificationStatus"]["coding"][0]["code"] == "provisional"         # A admitting
    assert third["code"]["coding"][0]["system"] == SCT
    assert "onsetDateTime" not in third and "recordedDate" not in third and "verificationStatus" not in third
    # a bad date is reported once, at DG1-5 of the third DG1; an unknown type at its DG1-6
    assert [(i.severity, i.code, i.segment, i.sequence, i.field) for i in result.issues] == [
        ("W", 102, "DG1", 3, 5), ("W", 103, "DG1", 3, 6)]
    # no DG1-20: identified by subject + code, so a resend can be recognised
    assert all(set(i.same) == {"subject", "code"} and not i.matches for i in conditions(result))


@pytest.mark.parametrize("name, system", [("SCT", SCT), ("SNOMEDCT", SCT), ("snomedct", SCT), ("SNM", SCT),
                                          ("SNOMED CT", SCT), ("2.16.840.1.113883.6.96", SCT),
                                          ("I10", ICD10), ("ICD10", ICD10)])
def test_coding_system_variants(engine, name, system):
    result = mapped(engine, with_dg1("A08", f"DG1|1||X1^Something^{name}||||F"))
    assert conditions(result)[0].resource["code"]["coding"][0]["system"] == system


def test_action_code_d_is_entered_in_error(engine):
    [intent] = conditions(mapped(engine, with_dg1(
        "A08", dg1(f1="1", f3="128188000^Cerebral palsy^SCT", f5="20230105", f6="F", f21="D"))))
    assert intent.resource["verificationStatus"] == {"coding": [{"system": VER_STATUS, "code": "entered-in-error",
                                                                 "display": "Entered in Error"}]}


def test_empty_dg1_is_left_out_with_a_warning_and_the_rest_is_kept(engine):
    result = mapped(engine, with_dg1("A04", "DG1|1||||20230105|A", "DG1|2||84757009^Epilepsy^SCT||||F"))
    assert [(i.severity, i.code, i.segment, i.sequence, i.field) for i in result.issues] == [
        ("W", 101, "DG1", 1, 3)]
    assert [c.resource["code"]["coding"][0]["code"] for c in conditions(result)] == ["84757009"]
    assert result.first("Patient") is not None


@pytest.mark.parametrize("event", ["A01", "A04", "A05", "A08", "A28", "A31"])
def test_dg1_maps_on_every_adt_event_that_carries_it(engine, event):
    result = mapped(engine, with_dg1(event, "DG1|1||84757009^Epilepsy^SCT||||F"))
    assert len(conditions(result)) == 1
    # referenced resources come first in the intents (and in `gateway convert`'s Bundle)
    assert result.intents[-1].resource_type == "Condition"


# -- end to end: MLLP in, Condition + marker Flag out ------------------------------------------
def send(gw, *messages: str) -> list[str]:
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        return [client.send(m) for m in messages]


def search(http, resource_type: str, **params: str) -> list[dict]:
    bundle = http.get(f"/fhir/{resource_type}", params=params).json()
    assert bundle.get("resourceType") == "Bundle", bundle
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def patient_id(http, child) -> str:
    [patient] = search(http, "Patient", identifier=f"https://fhir.nhs.uk/Id/nhs-number|{child.nhs_number}")
    return patient["id"]


def test_adt_a08_dg1_marks_the_child_and_a_resend_adds_nothing(gateway):
    child = make_child(42)
    diagnoses = [dict(f1="1", f3="128188000^Cerebral palsy^SCT", f5="20230105", f6="F"),
                 dict(f1="2", f3="84757009^Epilepsy^SNM", f5="20230210", f6="W"),
                 dict(f1="3", f3="J45.9^Asthma^I10", f5="20230301", f6="F", f20="DX-9^RXPAS")]
    dg1s = [dg1(**d) for d in diagnoses]
    first = with_dg1("A08", *dg1s, control_id="A08-1", sent=datetime(2025, 2, 1, 9), child=child)
    resend = with_dg1("A08", *dg1s, control_id="A08-2", sent=datetime(2025, 2, 2, 9), child=child)
    acks = send(gateway, first, resend, first)  # a new control id, then the very same message again
    assert [ack_code_of(a) for a in acks] == ["AA", "AA", "AA"], acks
    with gateway.http() as http:
        pid = patient_id(http, child)
        stored = search(http, "Condition", patient=f"Patient/{pid}")
        assert sorted(c["code"]["coding"][0]["code"] for c in stored) == ["128188000", "84757009", "J45.9"]
        assert all(c["meta"]["versionId"] == "1" for c in stored), "a resend must not write a new version"
        assert all(c["meta"]["source"] == "urn:hl7v2:RXPAS:RXH" for c in stored)
        palsy = next(c for c in stored if c["code"]["coding"][0]["code"] == CEREBRAL_PALSY)
        assert palsy["subject"] == {"reference": f"Patient/{pid}"}
        assert palsy["category"][0]["coding"][0]["code"] == "encounter-diagnosis"

        [flag] = search(http, "Flag", patient=f"Patient/{pid}", code=MARKER)
        assert flag["status"] == "active"
        assert flag["author"] == {"reference": codes.GATEWAY_DEVICE_REF}
        evidence = {e["valueReference"]["reference"] for e in flag["extension"] if e["url"] == codes.FLAG_DETAIL}
        epilepsy = next(c for c in stored if c["code"]["coding"][0]["code"] == "84757009")
        assert evidence == {f"Condition/{palsy['id']}", f"Condition/{epilepsy['id']}"}

        # The hospital withdraws both diagnoses (DG1-21 D): the evidence goes, so does the marker.
        withdrawn = with_dg1("A08", dg1(**diagnoses[0], f21="D"), dg1(**diagnoses[1], f21="D"),
                             control_id="A08-3", sent=datetime(2025, 2, 3, 9), child=child)
        assert ack_code_of(send(gateway, withdrawn)[0]) == "AA"
        assert len(search(http, "Condition", patient=f"Patient/{pid}")) == 3  # updated, not duplicated
        [flag] = search(http, "Flag", patient=f"Patient/{pid}", code=MARKER)
        assert flag["status"] == "inactive" and flag["period"].get("end")

        # An older message arriving late does not bring the withdrawn diagnoses back.
        assert ack_code_of(send(gateway, with_dg1("A08", *dg1s, control_id="A08-0", sent=datetime(2025, 1, 31, 9),
                                                  child=child))[0]) == "AA"
        palsy = http.get(f"/fhir/Condition/{palsy['id']}").json()
        assert palsy["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
        [flag] = search(http, "Flag", patient=f"Patient/{pid}", code=MARKER)
        assert flag["status"] == "inactive"


def test_another_sources_condition_with_the_same_code_is_left_alone(gateway):
    child = make_child(43)
    assert ack_code_of(send(gateway, adt_message(child, "A28", control_id="P1"))[0]) == "AA"
    with gateway.http() as http:
        pid = patient_id(http, child)
        gp_condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                 "condition-clinical", "code": "active"}]},
                        "code": {"coding": [{"system": SCT, "code": "84757009", "display": "Epilepsy"}]}}
        created = http.post("/fhir/Condition", json=gp_condition, headers={"content-type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        ack = send(gateway, with_dg1("A31", "DG1|1||84757009^Epilepsy^SCT||20230210|F", control_id="P2",
                                     sent=datetime(2025, 2, 1), child=child))[0]
        assert ack_code_of(ack) == "AA", ack
        stored = search(http, "Condition", patient=f"Patient/{pid}")
        assert len(stored) == 2
        mine = http.get(f"/fhir/Condition/{created.json()['id']}").json()
        assert mine["meta"]["versionId"] == "1" and "verificationStatus" not in mine
