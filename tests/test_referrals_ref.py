"""Referrals end to end: REF^I12/I13/I14/I15 over a real MLLP socket and POST /hl7v2,
one Task per concern, the completion guard, read back over FHIR HTTP; SQLite and
PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from gateway import codes
from gateway.hl7v2.ack import ack_code_of
from gateway.hl7v2.parser import parse_message
from gateway.ingest.mllp_client import MllpClient
from gateway.referrals.synthetic import ref_message
from gateway.store.reading import read_only
from gateway.synthetic import make_child

MESSAGES = Path(__file__).parent / "messages"
REFERRAL_SYSTEM = "https://fhir.gateway.example/id/rxpas/referral"
TASK_CODE = f"{codes.TASK_CODES}|{codes.TASK_REFERRAL_CONCERN}"


def send(gw, *messages: str) -> list[str]:
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        return [client.send(m) for m in messages]


def errors(ack: str) -> list[list[str]]:
    return [seg.fields for seg in parse_message(ack).find_all("ERR")]


def referral(http, referral_id: str) -> dict:
    bundle = http.get("/fhir/ServiceRequest", params={"identifier": f"{REFERRAL_SYSTEM}|{referral_id}"}).json()
    entries = bundle.get("entry", [])
    assert len(entries) == 1, bundle
    return entries[0]["resource"]


def tasks(http, sr_id: str, **params: str) -> list[dict]:
    bundle = http.get("/fhir/Task", params={"focus": f"ServiceRequest/{sr_id}", "code": TASK_CODE,
                                            **params}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def put(http, resource: dict):
    return http.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource,
                    headers={"content-type": "application/fhir+json"})


def test_three_concerns_three_tasks_completion_guarded(gateway):
    child = make_child(31)
    [ack] = send(gateway, ref_message(child, "I12", control_id="R1", referral_id="REF-31"))
    assert ack_code_of(ack) == "AA", ack
    with gateway.http() as http:
        sr = referral(http, "REF-31")
        assert sr["status"] == "active" and sr["intent"] == "order"
        assert [c["coding"][0]["code"] for c in sr["reasonCode"]] == ["F98.0", "R62.5", "Z63.8"]
        assert sr["performer"][0]["reference"].startswith("PractitionerRole/")
        open_tasks = tasks(http, sr["id"], status="requested")
        assert len(open_tasks) == 3
        assert sorted(t["reasonCode"]["coding"][0]["code"] for t in open_tasks) == ["F98.0", "R62.5", "Z63.8"]
        for task in open_tasks:
            assert task["owner"] == sr["performer"][0]
            assert task["for"] == sr["subject"]
            assert task["focus"] == {"reference": f"ServiceRequest/{sr['id']}"}

        # Actioning one concern never closes another.
        first = open_tasks[0]
        assert put(http, {**first, "status": "completed"}).status_code == 200
        assert len(tasks(http, sr["id"], status="requested")) == 2

        # The referral cannot be closed early: API -> 422 naming the element ...
        refused = put(http, {**sr, "status": "completed"})
        assert refused.status_code == 422, refused.text
        outcome = refused.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == ["ServiceRequest.status"]
        assert "2 of its concerns are open" in outcome["issue"][0]["diagnostics"]
        # ... and HL7 (I15, RF1-1 C = completed) -> AE, nothing changed.
        [ack] = send(gateway, ref_message(child, "I15", control_id="R2", referral_id="REF-31", status="C",
                                          concerns=[]))
        assert ack_code_of(ack) == "AE", ack
        assert "cannot be completed" in ack
        assert referral(http, "REF-31")["status"] == "active"

        # Close the other two (one completed, one cancelled): now the referral may complete.
        for task, status in zip(tasks(http, sr["id"], status="requested"), ("completed", "cancelled")):
            assert put(http, {**task, "status": status}).status_code == 200
        done = put(http, {**referral(http, "REF-31"), "status": "completed"})
        assert done.status_code == 200, done.text
        assert len(tasks(http, sr["id"])) == 3  # nothing deleted


def test_resend_and_modify_keep_one_task_per_concern(gateway):
    child = make_child(32)
    first = ref_message(child, "I12", control_id="M1", referral_id="REF-32")
    again = ref_message(child, "I12", control_id="M2", referral_id="REF-32")  # same content, new control id
    # I13 drops Z63.8 and adds F80.9; then a later I13 brings Z63.8 back.
    modify = ref_message(child, "I13", control_id="M3", referral_id="REF-32",
                         concerns=[("F98.0", "Non-organic enuresis"), ("R62.5", "Failure to thrive"),
                                   ("F80.9", "Speech and language delay")])
    restore = ref_message(child, "I13", control_id="M4", referral_id="REF-32",
                          concerns=[("F98.0", "Non-organic enuresis"), ("Z63.8", "Family circumstances")])
    assert [ack_code_of(a) for a in send(gateway, first, again)] == ["AA", "AA"]
    with gateway.http() as http:
        sr = referral(http, "REF-32")
        assert len(tasks(http, sr["id"])) == 3
        [ack] = send(gateway, modify)
        assert ack_code_of(ack) == "AA", ack
        by_code = {t["reasonCode"]["coding"][0]["code"]: t for t in tasks(http, sr["id"])}
        assert len(by_code) == 4
        assert by_code["Z63.8"]["status"] == "cancelled"  # removed -> cancelled, not deleted
        assert "removed" in by_code["Z63.8"]["statusReason"]["text"]
        assert {c: t["status"] for c, t in by_code.items() if c != "Z63.8"} == {
            "F98.0": "requested", "R62.5": "requested", "F80.9": "requested"}
        [ack] = send(gateway, restore)
        assert ack_code_of(ack) == "AA", ack
        by_code = {t["reasonCode"]["coding"][0]["code"]: t for t in tasks(http, sr["id"])}
        assert len(by_code) == 4  # the same Task reopened, not a second one
        assert by_code["Z63.8"]["status"] == "requested"
        assert by_code["R62.5"]["status"] == by_code["F80.9"]["status"] == "cancelled"


def test_cancel_for_non_attendance_sets_closure_reason_and_keeps_concerns_open(gateway):
    child = make_child(33)
    acks = send(gateway, ref_message(child, "I12", control_id="C1", referral_id="REF-33"),
                ref_message(child, "I14", control_id="C2", referral_id="REF-33", concerns=[],
                            reason="DNA^Did not attend^L"))
    assert [ack_code_of(a) for a in acks] == ["AA", "AA"], acks
    with gateway.http() as http:
        sr = referral(http, "REF-33")
        assert sr["status"] == "revoked"
        [ext] = [e for e in sr["extension"] if e["url"] == codes.EXT_CLOSURE_REASON]
        coding = ext["valueCodeableConcept"]["coding"]
        assert coding[0] == {"system": codes.CLOSURE_REASONS, "code": "non-attendance",
                             "display": "Closed after non-attendance"}
        assert coding[1]["code"] == "DNA"  # the sender's own code is kept
        assert len(sr["reasonCode"]) == 3  # a cancel without DG1 keeps the concerns
        assert len(tasks(http, sr["id"], status="requested")) == 3  # cancelling does not close concerns


def test_ref_without_concerns_is_answered_ae_and_nothing_is_stored(gateway):
    child = make_child(34)
    message = ref_message(child, "I12", control_id="N1", referral_id="REF-34", concerns=[])
    with gateway.http() as http:
        reply = http.post("/hl7v2", content=message, headers={"content-type": "application/hl7-v2"})
        assert reply.headers["x-hl7-ack-code"] == "AE"
        [err] = errors(reply.text)
        assert err[2].startswith("DG1^1^3"), err  # ERR-2: the segment and field
        assert "no concern" in err[8]
        bundle = http.get("/fhir/ServiceRequest", params={"identifier": f"{REFERRAL_SYSTEM}|REF-34"}).json()
        assert bundle.get("entry", []) == []
        assert http.get("/fhir/Patient", params={"identifier": f"{codes.NHS_NUMBER}|{child.nhs_number}"}
                        ).json().get("entry", []) == []
        logged = http.get("/hl7v2/messages", params={"outcome": "error"}).json()["messages"]
        assert any(m.get("control_id") == "N1" for m in logged), logged
    with read_only(gateway.engine) as uow:
        [(raw,)] = uow.fetchall("SELECT raw FROM message_log WHERE control_id=?", ("N1",))
        assert "REF^I12" in raw


def test_sample_file_maps_prd_into_practitioner_role_and_requester(gateway):
    text = (MESSAGES / "ref_i12_three_concerns.hl7").read_text()
    [ack] = send(gateway, text)
    assert ack_code_of(ack) == "AA", ack
    with gateway.http() as http:
        sr = referral(http, "RX-REF-1001")
        assert sr["priority"] == "routine"
        assert sr["category"][0]["coding"][0]["code"] == "3457005"
        assert sr["code"]["coding"][0]["code"] == "COMPAED"
        assert sr["note"] == [{"text": "Mother reports missed appointments with two other services."}]
        requester = http.get(f"/fhir/{sr['requester']['reference']}").json()
        assert requester["resourceType"] == "Practitioner"
        assert requester["identifier"][0] == {"system": "https://fhir.hl7.org.uk/Id/gmc-number", "value": "C9876543"}
        role = http.get(f"/fhir/{sr['performer'][0]['reference']}").json()
        assert role["resourceType"] == "PractitionerRole"
        assert {"system": "email", "value": "community.paeds@example.nhs.uk"} in role["telecom"]
        org = http.get(f"/fhir/{role['organization']['reference']}").json()
        assert org["name"] == "Community Paediatrics"
        assert {"system": "phone", "value": "01632960299", "use": "work"} in org["telecom"]
        assert len(tasks(http, sr["id"], status="requested")) == 3


def test_fhir_clients_create_referrals_directly(gateway):
    child = make_child(35)
    [ack] = send(gateway, ref_message(child, "I12", control_id="F0", referral_id="REF-35"))  # the Patient
    with gateway.http() as http:
        patient_id = referral(http, "REF-35")["subject"]["reference"]
        body = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                "subject": {"reference": patient_id},
                "reasonCode": [{"text": "Weight loss"}, {"text": "weight  LOSS"}, {"text": "Low mood"}]}
        created = http.post("/fhir/ServiceRequest", json=body, headers={"content-type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        sr = created.json()
        assert len(tasks(http, sr["id"])) == 2  # the same concern twice is one concern
        missing = http.post("/fhir/ServiceRequest", json={**body, "subject": {"reference": "Patient/nobody"}},
                            headers={"content-type": "application/fhir+json"})
        assert missing.status_code == 422
        assert missing.json()["issue"][0]["expression"] == ["ServiceRequest.subject"]
