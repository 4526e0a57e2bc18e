"""Transaction and batch Bundles at POST /fhir, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from gateway.store.reading import read_only

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def patient(nhs: str = "9434765919", **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": NHS, "value": nhs}],
            "name": [{"family": "Rivers"}], **extra}


def appointment(reference: str, status: str = "booked") -> dict:
    return {"resourceType": "Appointment", "status": status, "start": "2025-06-02T10:30:00Z",
            "end": "2025-06-02T11:00:00Z",
            "participant": [{"actor": {"reference": reference}, "status": "accepted"}]}


def post_entry(resource: dict, full_url: str | None = None, **request: str) -> dict:
    entry = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def count(gw, res_type: str) -> int:
    with read_only(gw.engine) as uow:
        return uow.fetchone("SELECT COUNT(*) FROM resources WHERE res_type=?", (res_type,))[0]


def test_transaction_rewrites_urn_uuid_references_to_the_new_ids(gateway):
    child_urn = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    with gateway.http() as http:
        # the Appointment comes first in the Bundle: order of entries must not matter
        response = http.post("/fhir", json=bundle("transaction",
                                                  post_entry(appointment(child_urn, "noshow")),
                                                  post_entry(patient(), child_urn)))
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["type"] == "transaction-response"
        appt_entry, patient_entry = result["entry"]
        assert patient_entry["response"]["status"] == "201 Created"
        assert patient_entry["response"]["etag"] == 'W/"1"'
        assert patient_entry["response"]["location"].startswith("Patient/")
        assert appt_entry["response"]["location"].startswith("Appointment/")
        patient_id = patient_entry["response"]["location"].split("/")[1]
        appt_id = appt_entry["response"]["location"].split("/")[1]
        stored = http.get(f"/fhir/Appointment/{appt_id}").json()
        assert stored["participant"][0]["actor"]["reference"] == f"Patient/{patient_id}"
        assert http.get(f"/fhir/Patient/{patient_id}").status_code == 200
    with read_only(gateway.engine) as uow:
        events = uow.fetchall("SELECT topic, focus_id, patient_id FROM outbox_events")
    assert events == [("appointment-noshow", appt_id, patient_id)]


def test_transaction_is_all_or_nothing(gateway):
    with gateway.http() as http:
        response = http.post("/fhir", json=bundle("transaction",
                                                  post_entry(patient(), "urn:uuid:a"),
                                                  post_entry(appointment("urn:uuid:a", status="arrived-ish"))))
        assert response.status_code == 422
        issue = response.json()["issue"][0]
        assert issue["expression"][0] == "Bundle.entry[1]"
        assert "Bundle.entry[1].resource.status" in issue["expression"]
        assert count(gateway, "Patient") == 0
        assert count(gateway, "Appointment") == 0


def test_transaction_conditional_create_and_conditional_reference(gateway):
    with gateway.http() as http:
        existing = http.post("/fhir/Patient", json=patient()).json()
        response = http.post("/fhir", json=bundle(
            "transaction",
            post_entry(patient(), "urn:uuid:p", ifNoneExist=f"identifier={NHS}|9434765919"),
            post_entry(appointment("urn:uuid:p")),
            post_entry(appointment(f"Patient?identifier={NHS}|9434765919"))))
        assert response.status_code == 200, response.text
        entries = response.json()["entry"]
        assert entries[0]["response"]["status"] == "200 OK"
        assert entries[0]["response"]["location"] == f"Patient/{existing['id']}/_history/1"
        for entry in entries[1:]:
            assert entry["resource"]["participant"][0]["actor"]["reference"] == f"Patient/{existing['id']}"
        assert count(gateway, "Patient") == 1
        unresolvable = http.post("/fhir", json=bundle(
            "transaction", post_entry(appointment(f"Patient?identifier={NHS}|0000000000"))))
        assert unresolvable.status_code == 412
        assert unresolvable.json()["issue"][0]["expression"][0] == "Bundle.entry[0]"


def test_transaction_put_delete_and_if_match(gateway):
    with gateway.http() as http:
        first = http.post("/fhir/Patient", json=patient()).json()
        doomed = http.post("/fhir/Patient", json=patient(nhs="9434765870")).json()
        response = http.post("/fhir", json=bundle(
            "transaction",
            {"resource": {**first, "gender": "other"},
             "request": {"method": "PUT", "url": f"Patient/{first['id']}", "ifMatch": 'W/"1"'}},
            {"request": {"method": "DELETE", "url": f"Patient/{doomed['id']}"}},
            {"resource": patient(nhs="9434765889"),
             "request": {"method": "PUT", "url": f"Patient?identifier={NHS}|9434765889"}},
            {"request": {"method": "GET", "url": f"Patient/{first['id']}"}}))
        assert response.status_code == 200, response.text
        statuses = [e["response"]["status"] for e in response.json()["entry"]]
        assert statuses == ["200 OK", "204 No Content", "201 Created", "200 OK"]
        # the GET ran after the PUT (FHIR order), inside the same transaction
        assert response.json()["entry"][3]["resource"]["gender"] == "other"
        assert http.get(f"/fhir/Patient/{doomed['id']}").status_code == 410
        stale = http.post("/fhir", json=bundle(
            "transaction",
            post_entry(patient(nhs="9434765897")),
            {"resource": first, "request": {"method": "PUT", "url": f"Patient/{first['id']}",
                                            "ifMatch": 'W/"1"'}}))
        assert stale.status_code == 412
        assert count(gateway, "Patient") == 3  # the POST of the failed transaction was rolled back


def test_transaction_rejects_bad_bundles(gateway):
    with gateway.http() as http:
        assert http.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}).status_code == 400
        assert http.post("/fhir", json=patient()).status_code == 400
        missing_request = http.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                                   "entry": [{"resource": patient()}]})
        assert missing_request.status_code == 400
        assert missing_request.json()["issue"][0]["expression"][0].startswith("Bundle.entry[0]")
        dangling = http.post("/fhir", json=bundle("transaction", post_entry(appointment("urn:uuid:nowhere"))))
        assert dangling.status_code == 400
        twice = http.post("/fhir", json=bundle(
            "transaction",
            {"resource": patient(id="p1"), "request": {"method": "PUT", "url": "Patient/p1"}},
            {"request": {"method": "DELETE", "url": "Patient/p1"}}))
        assert twice.status_code == 400
        assert count(gateway, "Patient") == 0


def test_batch_entries_succeed_or_fail_independently(gateway):
    with gateway.http() as http:
        response = http.post("/fhir", json=bundle(
            "batch",
            post_entry(patient()),
            post_entry(appointment("Patient/x", status="arrived-ish")),
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            post_entry(patient(nhs="9434765870")),
            {"request": {"method": "GET", "url": f"Patient?identifier={NHS}|9434765919"}}))
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["type"] == "batch-response"
        entries = result["entry"]
        assert [e["response"]["status"] for e in entries] == [
            "201 Created", "422 Unprocessable Entity", "404 Not Found", "201 Created", "200 OK"]
        outcome = entries[1]["response"]["outcome"]
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == ["Appointment.status"]
        assert entries[4]["resource"]["total"] == 1
        assert count(gateway, "Patient") == 2
        assert count(gateway, "Appointment") == 0


def test_prefer_minimal_leaves_resources_out_of_the_response_bundle(gateway):
    with gateway.http() as http:
        response = http.post("/fhir", json=bundle("transaction", post_entry(patient())),
                             headers={"Prefer": "return=minimal"})
        entry = response.json()["entry"][0]
        assert "resource" not in entry
        assert entry["response"]["status"] == "201 Created"


def test_transaction_posted_to_base_with_trailing_slash_is_not_redirected(sqlite_gateway):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "metadata"}}]}
    with sqlite_gateway.http() as http:
        reply = http.post("/fhir/", json=bundle, headers={"content-type": "application/fhir+json"},
                          follow_redirects=False)
    assert reply.status_code == 200, reply.text
    assert reply.json()["type"] == "batch-response"
