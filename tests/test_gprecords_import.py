"""GP records in, end to end over HTTP (``POST /fhir/$import-gp-record``), on SQLite and
PostgreSQL: joined to the hospital's child by NHS number, idempotent, all-or-nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from gateway import codes

GP = Path(__file__).parent / "gp"
NHS_JOINED = "9990041016"  # the STU3 record's child, also in the hospital feed below
NHS_R4 = "9990041024"
FHIR_JSON = {"content-type": "application/fhir+json"}

# A hospital no-show for the same child, registered at the same practice (PD1-3 ODS Y12345).
HOSPITAL_S26 = "\r".join([
    "MSH|^~\\&|CAREFLOW_PAS|RVH|GATEWAY|SAFEGUARDING|20240514113000+0100||SIU^S26^SIU_S12|GPT0001|P|2.5.1|||AL|NE",
    "SCH|PL-GP-1^EPR|FA-GP-1^CAREFLOW_PAS||||DNA^Did not attend^L|CHECKUP^Routine review^L|||||||||",
    "TQ1|1||||||20240514100000+0100|20240514103000+0100",
    f"PID|1||RVH7770001^^^RVH^MR~{NHS_JOINED}^^^NHS^NH||GARSIDE^ISLA^MAY^^^^L||20160402|F|||"
    "12 Orchard Way^^Riverside^^RV1 2AB^GBR^H",
    "PD1|||Riverside Medical Practice^^^^^^^^^Y12345",
    "RGS|1|A",
    "AIS|1|A|PAEDCL^Paediatric outpatient clinic^L|20240514100000+0100|||30|MIN||Booked",
]) + "\r"


def load(name: str) -> dict:
    return json.loads((GP / name).read_text())


def search(http, query: str) -> list[dict]:
    bundle = http.get(f"/fhir/{query}").json()
    assert bundle["resourceType"] == "Bundle", bundle
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def counts(http) -> dict[str, int]:
    return {t: len(search(http, f"{t}?_count=500")) for t in
            ("Patient", "Organization", "Practitioner", "Condition", "Appointment", "Encounter", "Observation",
             "ServiceRequest", "Flag", "PractitionerRole")}


def part(match: dict, name: str):
    for p in match["part"]:
        if p["name"] == name:
            return next(v for k, v in p.items() if k.startswith("value"))
    return None


def test_gp_connect_record_joins_the_hospital_child(gateway):
    with gateway.http() as http:
        ack = http.post("/hl7v2", content=HOSPITAL_S26, headers={"content-type": "application/hl7-v2"})
        assert ack.headers["X-HL7-Ack-Code"] in ("AA", "CA"), ack.text
        [hospital] = search(http, f"Patient?identifier={codes.NHS_NUMBER}|{NHS_JOINED}")

        reply = http.post("/fhir/$import-gp-record", json=load("gpconnect_stu3_structured.json"), headers=FHIR_JSON)
        assert reply.status_code == 200, reply.text
        summary = reply.json()
        values = {p["name"]: p.get("valueInteger") for p in summary["parameter"]}
        assert values["errors"] == 0 and values["skipped"] == 2  # List, MedicationStatement
        [match] = [p for p in summary["parameter"] if p["name"] == "match"]
        assert part(match, "outcome") == "joined"
        assert part(match, "patient") == {"reference": f"Patient/{hospital['id']}"}

        # One child: the GP record landed on the hospital's Patient.
        [patient] = search(http, f"Patient?identifier={codes.NHS_NUMBER}|{NHS_JOINED}")
        assert patient["id"] == hospital["id"]
        systems = {i["system"] for i in patient["identifier"]}
        assert any(s.startswith(codes.SOURCE_RECORD_ID) for s in systems)  # the GP's own id, kept
        assert any(i["value"] == "RVH7770001" for i in patient["identifier"])  # the hospital MRN, kept
        assert patient["name"][0]["given"][:2] == ["ISLA", "MAY"]  # hospital demographics not clobbered
        assert patient["meta"]["source"] == "urn:hl7v2:CAREFLOW_PAS:RVH"
        # Registration: the practice (same Organization the hospital's PD1 named, by ODS) + the usual GP.
        [practice] = search(http, f"Organization?identifier={codes.ODS_CODE}|Y12345")
        gp_refs = [g["reference"] for g in patient["generalPractitioner"]]
        assert f"Organization/{practice['id']}" in gp_refs
        [gp] = search(http, "Practitioner?identifier=https://fhir.nhs.uk/Id/sds-user-id|G1234567")
        assert f"Practitioner/{gp['id']}" in gp_refs
        assert practice["telecom"]  # the GP record filled a gap on the hospital's Organization

        # Missed at the hospital and at the practice: one list, told apart by meta.source.
        noshows = search(http, f"Appointment?patient=Patient/{patient['id']}&status=noshow")
        sources = sorted(a["meta"]["source"] for a in noshows)
        assert len(noshows) == 4, [a.get("description") for a in noshows]  # S26 + GP noshow + 2 coded DNAs
        assert sources.count("urn:hl7v2:CAREFLOW_PAS:RVH") == 1
        derived = [a for a in noshows if any(e["url"] == codes.EXT_DERIVED_FROM for e in a.get("extension", []))]
        assert {d["extension"][0]["valueReference"]["reference"].split("/")[0] for d in derived} == \
            {"Observation", "Encounter"}

        # Markers: complex needs (cerebral palsy), CP plan (Condition), looked after (GP Flag).
        flags = search(http, f"Flag?patient=Patient/{patient['id']}&code={codes.FLAG_CODES}|")
        markers = {f["code"]["coding"][0]["code"]: f for f in flags}
        assert {codes.FLAG_COMPLEX_NEEDS, codes.FLAG_CHILD_PROTECTION_PLAN, codes.FLAG_LOOKED_AFTER} <= set(markers)
        assert codes.FLAG_SAFEGUARDING_CONCERN not in markers
        assert all(f["status"] == "active" and f["author"]["reference"] == codes.GATEWAY_DEVICE_REF
                   for f in markers.values())

        # Provenance says which system wrote what.
        assert search(http, f"Provenance?target=Patient/{patient['id']}") or search(http, "Provenance")

        # Idempotent: the same record again creates nothing and writes no new version.
        before = counts(http)
        again = http.post("/fhir/$import-gp-record", json=load("gpconnect_stu3_structured.json"), headers=FHIR_JSON)
        assert again.status_code == 200, again.text
        again_values = {p["name"]: p.get("valueInteger") for p in again.json()["parameter"]}
        assert again_values["created"] == 0 and again_values["updated"] == 0
        assert counts(http) == before


def test_r4_record_without_nhs_number_is_not_merged(gateway):
    with gateway.http() as http:
        reply = http.post("/fhir/$import-gp-record", json=load("uk_core_r4_collection.json"), headers=FHIR_JSON)
        assert reply.status_code == 200, reply.text
        matches = [p for p in reply.json()["parameter"] if p["name"] == "match"]
        outcomes = sorted(part(m, "outcome") for m in matches)
        assert outcomes == ["created", "not-merged"]
        lonely = next(m for m in matches if part(m, "outcome") == "not-merged")
        assert "no NHS number" in part(lonely, "reason")
        patients = search(http, "Patient?family=Pendry")
        assert len(patients) == 2  # same name and birth date, still two records: never auto-merged
        [kai] = search(http, f"Patient?identifier={codes.NHS_NUMBER}|{NHS_R4}")
        assert kai["generalPractitioner"][0]["reference"].startswith("Organization/")
        [cf] = search(http, f"Condition?patient=Patient/{kai['id']}")
        assert cf["meta"]["source"] == "https://region.example/fhir/shared-care-record"
        flags = search(http, f"Flag?patient=Patient/{kai['id']}&code={codes.FLAG_CODES}|{codes.FLAG_COMPLEX_NEEDS}")
        assert [f["status"] for f in flags] == ["active"]
        [noshow] = search(http, f"Appointment?patient=Patient/{kai['id']}")
        assert noshow["status"] == "noshow"


def test_bad_record_names_every_bad_entry_and_writes_nothing(gateway):
    record = load("gpconnect_stu3_structured.json")
    record["entry"][6]["resource"]["onsetDateTime"] = "sometime"  # Condition 20
    record["entry"][11]["resource"]["subject"] = {"reference": "Patient/404"}  # ReferralRequest 40
    record["entry"][12]["resource"]["status"] = "waving"  # Flag 50
    record["entry"].append({"resource": {"resourceType": "Gizmo", "id": "1"}})
    with gateway.http() as http:
        reply = http.post("/fhir/$import-gp-record", json=record, headers=FHIR_JSON)
        assert reply.status_code == 422, reply.text
        outcome = reply.json()
        errors = [i for i in outcome["issue"] if i["severity"] == "error"]
        named = {e["diagnostics"].split(":")[0] for e in errors}
        assert {"Bundle.entry[6]", "Bundle.entry[12]", "Bundle.entry[16]"} <= named, errors
        assert any("Gizmo" in e["diagnostics"] for e in errors)
        assert any(e["expression"][0].startswith("Bundle.entry[6].resource.onset") for e in errors)
        assert search(http, "Patient") == [] and search(http, "Condition") == []

        # Only the reference is wrong: found when writing, still nothing written.
        record = load("gpconnect_stu3_structured.json")
        record["entry"][11]["resource"]["subject"] = {"reference": "Patient/404"}
        reply = http.post("/fhir/$import-gp-record", json=record, headers=FHIR_JSON)
        assert reply.status_code == 422, reply.text
        [error] = [i for i in reply.json()["issue"] if i["severity"] == "error"]
        assert error["diagnostics"].startswith("Bundle.entry[11]") and "Patient/404" in error["diagnostics"]
        assert error["expression"] == ["Bundle.entry[11].resource.subject"]
        assert search(http, "Patient") == []


def test_wrong_fhir_version_is_refused(gateway):
    r5ish = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Encounter", "status": "completed", "class": [{"text": "R5 class"}]}}]}
    with gateway.http() as http:
        reply = http.post("/fhir/$import-gp-record", json=r5ish, headers=FHIR_JSON)
        assert reply.status_code == 400 and "R5" in reply.text
        declared = http.post("/fhir/$import-gp-record?fhirVersion=3.0.1", json=load("uk_core_r4_collection.json"),
                             headers=FHIR_JSON)
        assert declared.status_code == 400 and "declared FHIR STU3" in declared.text
        dstu2 = http.post("/fhir/$import-gp-record", json=load("uk_core_r4_collection.json"),
                          headers={"content-type": "application/fhir+json; fhirVersion=1.0"})
        assert dstu2.status_code == 400 and "not supported" in dstu2.text
        not_bundle = http.post("/fhir/$import-gp-record", json={"resourceType": "Patient"}, headers=FHIR_JSON)
        assert not_bundle.status_code == 400
        assert search(http, "Patient") == []


def test_gp_r4_transaction_through_post_fhir(gateway):
    record = load("uk_core_r4_collection.json")
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    for entry in record["entry"]:
        resource = copy.deepcopy(entry["resource"])
        resource.pop("id", None)
        tx["entry"].append({"fullUrl": entry["fullUrl"], "resource": resource,
                            "request": {"method": "POST", "url": resource["resourceType"]}})
    with gateway.http() as http:
        good = http.post("/fhir", json=tx, headers=FHIR_JSON)
        assert good.status_code == 200, good.text
        [kai] = search(http, f"Patient?identifier={codes.NHS_NUMBER}|{NHS_R4}")
        flags = search(http, f"Flag?patient=Patient/{kai['id']}&code={codes.FLAG_CODES}|{codes.FLAG_COMPLEX_NEEDS}")
        assert len(flags) == 1  # the write hooks (markers) ran for the transaction too

        bad = copy.deepcopy(tx)
        bad["entry"][3]["resource"]["onsetDateTime"] = "yesterday"
        bad["entry"][4]["resource"]["status"] = "skipped"
        before = counts(http)
        reply = http.post("/fhir", json=bad, headers=FHIR_JSON)
        assert reply.status_code in (400, 422), reply.text
        named = {i["expression"][0] for i in reply.json()["issue"]}
        assert {"Bundle.entry[3]", "Bundle.entry[4]"} <= named, reply.json()
        assert counts(http) == before  # all or nothing
