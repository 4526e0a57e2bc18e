"""The spine end to end: HL7 v2 in over a real MLLP socket and real HTTP, FHIR out,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from gateway.hl7v2.ack import ack_code_of
from gateway.hl7v2.parser import parse_message
from gateway.ingest.mllp_client import MllpClient
from gateway.synthetic import adt_message, make_child, siu_message
from gateway.store.reading import read_only

NHS = "https://fhir.nhs.uk/Id/nhs-number"
WHEN = datetime(2025, 6, 2, 10, 30)


def send(gw, *messages: str) -> list[str]:
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        return [client.send(m) for m in messages]


def err_segments(ack: str) -> list[list[str]]:
    return [seg.fields for seg in parse_message(ack).find_all("ERR")]


def patient_by_nhs(http, nhs: str) -> list[dict]:
    bundle = http.get("/fhir/Patient", params={"identifier": f"{NHS}|{nhs}"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def appointments_of(http, patient_id: str) -> list[dict]:
    bundle = http.get("/fhir/Appointment", params={"patient": f"Patient/{patient_id}"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_booking_then_no_show_is_one_appointment_ending_noshow(gateway):
    child = make_child(1)
    acks = send(gateway,
                siu_message(child, 1, "S12", control_id="C1", when=WHEN, sent=datetime(2025, 5, 1, 9)),
                siu_message(child, 1, "S26", control_id="C2", when=WHEN, sent=datetime(2025, 6, 2, 12)))
    assert [ack_code_of(a) for a in acks] == ["AA", "AA"]
    assert parse_message(acks[0]).find("MSA").value(2) == "C1"
    with gateway.http() as http:
        patients = patient_by_nhs(http, child.nhs_number)
        assert len(patients) == 1
        appts = appointments_of(http, patients[0]["id"])
        assert len(appts) == 1
        assert appts[0]["status"] == "noshow"
        assert appts[0]["meta"]["versionId"] == "2"
        first = http.get(f"/fhir/Appointment/{appts[0]['id']}/_history/1").json()
        assert first["status"] == "booked"
        read = http.get(f"/fhir/Appointment/{appts[0]['id']}")
        assert read.headers["etag"] == 'W/"2"'
        assert read.headers["content-type"].startswith("application/fhir+json")
    with read_only(gateway.engine) as uow:
        events = uow.fetchall("SELECT topic, focus_id, patient_id FROM outbox_events")
    assert events == [("appointment-noshow", appts[0]["id"], patients[0]["id"])]


def test_resent_message_gets_original_ack_and_is_not_processed_again(gateway):
    child = make_child(2)
    message = siu_message(child, 1, "S12", control_id="DUP1", when=WHEN)
    first, second = send(gateway, message, message)
    assert first == second
    with read_only(gateway.engine) as uow:
        outcomes = uow.fetchall("SELECT outcome FROM message_log WHERE control_id='DUP1' ORDER BY id")
        versions = uow.fetchone("SELECT MAX(version_id) FROM resources WHERE res_type='Appointment'")
    assert [o[0] for o in outcomes] == ["processed", "duplicate"]
    assert versions[0] == 1


def test_late_older_message_never_turns_a_noshow_back_into_booked(gateway):
    child = make_child(3)
    send(gateway,
         siu_message(child, 7, "S26", control_id="N1", when=WHEN, sent=datetime(2025, 6, 2, 12)),
         siu_message(child, 7, "S14", control_id="N0", when=WHEN, sent=datetime(2025, 6, 1, 8)))
    with gateway.http() as http:
        patient = patient_by_nhs(http, child.nhs_number)[0]
        appts = appointments_of(http, patient["id"])
    assert [a["status"] for a in appts] == ["noshow"]


def test_same_content_under_a_new_control_id_writes_no_new_version(gateway):
    child = make_child(4)
    send(gateway, siu_message(child, 1, "S12", control_id="V1", when=WHEN),
         siu_message(child, 1, "S12", control_id="V2", when=WHEN))
    with read_only(gateway.engine) as uow:
        rows = uow.fetchall("SELECT res_type, COUNT(*), MAX(version_id) FROM resources GROUP BY res_type")
    counts = {r[0]: (r[1], r[2]) for r in rows}
    assert counts["Patient"] == (1, 1)
    assert counts["Appointment"] == (1, 1)


def test_hl7_over_http_answers_with_the_ack(gateway):
    child = make_child(5)
    with gateway.http() as http:
        reply = http.post("/hl7v2", content=siu_message(child, 1, "S12", control_id="H1", when=WHEN),
                          headers={"content-type": "x-application/hl7-v2+er7"})
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("x-application/hl7-v2+er7")
        assert ack_code_of(reply.text) == "AA"
        assert reply.headers["x-hl7-ack-code"] == "AA"
        wrong = http.post("/hl7v2", content=b"{}", headers={"content-type": "application/json"})
        assert wrong.status_code == 415
        assert wrong.json()["resourceType"] == "OperationOutcome"
        assert len(patient_by_nhs(http, child.nhs_number)) == 1


def test_adt_then_siu_land_on_the_same_child(gateway):
    child = make_child(6)
    acks = send(gateway, adt_message(child, "A04", control_id="A1"),
                siu_message(child, 1, "S12", control_id="A2", when=WHEN),
                adt_message(child, "A08", control_id="A3", sent=datetime(2025, 2, 1)))
    assert [ack_code_of(a) for a in acks] == ["AA", "AA", "AA"]
    with gateway.http() as http:
        patients = patient_by_nhs(http, child.nhs_number)
        assert len(patients) == 1
        assert len(appointments_of(http, patients[0]["id"])) == 1
        mrn = http.get("/fhir/Patient", params={"identifier": f"{child.mrn}"}).json()
        assert mrn["total"] == 1


def test_two_different_nhs_numbers_are_never_merged_even_with_the_same_mrn(gateway):
    first = make_child(7)
    second = make_child(8)
    clash = dataclasses.replace(second, mrn=first.mrn)
    send(gateway, adt_message(first, "A04", control_id="M1"), adt_message(clash, "A04", control_id="M2"))
    with gateway.http() as http:
        assert len(patient_by_nhs(http, first.nhs_number)) == 1
        assert len(patient_by_nhs(http, clash.nhs_number)) == 1
        assert patient_by_nhs(http, first.nhs_number)[0]["id"] != patient_by_nhs(http, clash.nhs_number)[0]["id"]


def test_s17_deletes_and_reads_give_410(gateway):
    child = make_child(9)
    message = siu_message(child, 1, "S12", control_id="D1", when=WHEN)
    delete = message.replace("SIU^S12^SIU_S12|D1", "SIU^S17^SIU_S12|D2")
    acks = send(gateway, message, delete)
    assert [ack_code_of(a) for a in acks] == ["AA", "AA"]
    with gateway.http() as http:
        patient = patient_by_nhs(http, child.nhs_number)[0]
        assert appointments_of(http, patient["id"]) == []
    with read_only(gateway.engine) as uow:
        appt_id = uow.fetchone("SELECT res_id FROM resources WHERE res_type='Appointment'")[0]
    with gateway.http() as http:
        gone = http.get(f"/fhir/Appointment/{appt_id}")
        assert gone.status_code == 410
        assert gone.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("sqlite_only", [True])
def test_fhir_errors_are_operation_outcomes(sqlite_gateway, sqlite_only):
    with sqlite_gateway.http() as http:
        assert http.get("/fhir/Patient/nope").status_code == 404
        assert http.get("/fhir/Spaceship/1").status_code == 404
        bad = http.get("/fhir/Patient", params={"colour": "blue"})
        assert bad.status_code == 400
        assert "colour" in bad.json()["issue"][0]["diagnostics"]
        lenient = http.get("/fhir/Patient", params={"colour": "blue"}, headers={"prefer": "handling=lenient"})
        assert lenient.status_code == 200
        meta = http.get("/fhir/metadata").json()
        assert meta["resourceType"] == "CapabilityStatement"
        assert meta["fhirVersion"] == "4.0.1"
        assert http.get("/healthz").json()["status"] == "ok"
        assert "gateway_ingest_total" in http.get("/metrics").text
