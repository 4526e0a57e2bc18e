"""Real clients against the real server: the fhirpy library a GP supplier might use,
and plain httpx, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def test_fhirpy_create_read_update_search_delete(gateway):
    client = SyncFHIRClient(gateway.fhir)
    child = client.resource("Patient", identifier=[{"system": NHS, "value": "9434765919"}],
                            name=[{"family": "Rivers", "given": ["Mia"]}], gender="female")
    child.save()
    assert child.id and child["meta"]["versionId"] == "1"

    read = client.reference("Patient", child.id).to_resource()
    assert read["name"][0]["family"] == "Rivers"

    read["gender"] = "other"
    read.save()
    assert read["meta"]["versionId"] == "2"
    assert client.reference("Patient", child.id).to_resource()["gender"] == "other"

    found = client.resources("Patient").search(identifier=f"{NHS}|9434765919").fetch_all()
    assert [p.id for p in found] == [child.id]

    appointment = client.resource("Appointment", status="noshow", start="2025-06-02T10:30:00Z",
                                  end="2025-06-02T11:00:00Z",
                                  participant=[{"actor": child.to_reference(), "status": "accepted"}])
    appointment.save()
    assert [a.id for a in client.resources("Appointment").search(patient=child.id).fetch_all()] == [appointment.id]

    read.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", child.id).to_resource()
    assert client.resources("Patient").search(identifier=f"{NHS}|9434765919").fetch_all() == []


def test_fhirpy_sees_validation_errors_and_conditional_create(gateway):
    client = SyncFHIRClient(gateway.fhir)
    with pytest.raises(OperationOutcome) as caught:
        client.resource("Appointment", status="arrived-ish", participant=[{"status": "accepted"}]).save()
    assert "arrived-ish" in str(caught.value)
    resource = client.resource("Patient", identifier=[{"system": NHS, "value": "9434765870"}])
    first, created = client.resources("Patient").search(identifier=f"{NHS}|9434765870").get_or_create(resource)
    again, created_again = client.resources("Patient").search(identifier=f"{NHS}|9434765870") \
        .get_or_create(resource)
    assert created and not created_again
    assert first.id == again.id
    client.resource("Patient", name=[{"family": "Twin"}]).save()
    client.resource("Patient", name=[{"family": "Twin"}]).save()
    with pytest.raises(MultipleResourcesFound):
        client.resources("Patient").search(family="Twin").get_or_create(client.resource("Patient"))


def test_httpx_round_trip_with_etags(gateway):
    with httpx.Client(base_url=gateway.fhir, headers={"Accept": "application/fhir+json"}) as http:
        created = http.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert created.status_code == 201
        location = created.headers["location"]
        assert httpx.get(location).json()["id"] == created.json()["id"]
        etag = created.headers["etag"]
        body = {**created.json(), "gender": "other"}
        updated = http.put(f"/Patient/{body['id']}", json=body, headers={"If-Match": etag})
        assert updated.status_code == 200 and updated.headers["etag"] == 'W/"2"'
        assert http.put(f"/Patient/{body['id']}", json=body, headers={"If-Match": etag}).status_code == 412
        assert http.delete(f"/Patient/{body['id']}", headers={"If-Match": updated.headers["etag"]}) \
            .status_code == 204
        assert http.get(f"/Patient/{body['id']}").status_code == 410
