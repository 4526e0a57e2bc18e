"""The SMART on FHIR python client (fhirclient, R4 models) against the real server, on
SQLite and PostgreSQL.  fhirclient parses every answer into its R4 model classes, which
check datatypes and required elements, so these tests also catch a malformed answer.
Synthetic children only (999 test-range NHS numbers)."""

from __future__ import annotations

import pytest
import requests
from fhirclient import client as smart_client
from fhirclient.models.appointment import Appointment
from fhirclient.models.bundle import Bundle
from fhirclient.models.patient import Patient

from gateway.synthetic import synthetic_nhs_number

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _server(gateway):
    return smart_client.FHIRClient(settings={"app_id": "gateway-tests", "api_base": gateway.fhir}).server


def _patient(server, n: int, family: str) -> Patient:
    patient = Patient({"resourceType": "Patient", "identifier": [{"system": NHS, "value": synthetic_nhs_number(n)}],
                       "name": [{"family": family, "given": ["Test"]}], "gender": "female",
                       "birthDate": "2017-02-14"})
    created = patient.create(server)
    return Patient(created)


def test_fhirclient_create_read_update_search(gateway):
    server = _server(gateway)
    child = _patient(server, 701, "Kendrick")
    assert child.id and child.meta.versionId == "1"

    read = Patient.read(child.id, server)
    assert read.name[0].family == "Kendrick"
    assert read.identifier[0].value == synthetic_nhs_number(701)
    assert read.birthDate.isostring == "2017-02-14"

    read.gender = "other"
    updated = Patient(read.update())
    assert updated.meta.versionId == "2" and Patient.read(child.id, server).gender == "other"

    _patient(server, 702, "Kendrick")
    found = list(Patient.where({"identifier": f"{NHS}|{synthetic_nhs_number(701)}"}).perform_resources_iter(server))
    assert [p.id for p in found] == [child.id]
    assert len(list(Patient.where({"family": "kendr"}).perform_resources_iter(server))) == 2

    with pytest.raises(Exception) as caught:  # fhirclient: FHIRNotFoundException for 404
        Patient.read("no-such-child", server)
    assert "404" in str(caught.value) or type(caught.value).__name__ == "FHIRNotFoundException"

    read.delete()
    with pytest.raises(requests.HTTPError) as gone:  # 410: fhirclient leaves it to requests
        Patient.read(child.id, server)
    assert gone.value.response.status_code == 410


def test_fhirclient_chained_search_paging_everything_and_transaction(gateway):
    server = _server(gateway)
    child, other = _patient(server, 711, "Lowther"), _patient(server, 712, "Marsh")
    created = []
    for day in range(1, 13):
        appointment = Appointment({"resourceType": "Appointment", "status": "noshow" if day % 2 else "booked",
                                   "start": f"2025-03-{day:02d}T09:00:00Z", "end": f"2025-03-{day:02d}T09:30:00Z",
                                   "participant": [{"actor": {"reference": f"Patient/{child.id}"},
                                                    "status": "accepted"}]})
        created.append(Appointment(appointment.create(server)).id)
    Appointment({"resourceType": "Appointment", "status": "noshow", "start": "2025-03-01T09:00:00Z",
                 "end": "2025-03-01T09:30:00Z",
                 "participant": [{"actor": {"reference": f"Patient/{other.id}"}, "status": "accepted"}]}).create(server)

    # Chained search, five per page, every page followed through the `next` links.
    search = Appointment.where({"patient.identifier": f"{NHS}|{synthetic_nhs_number(711)}", "_count": "5"})
    pages = list(search.perform_iter(server))
    assert [len(page.entry) for page in pages] == [5, 5, 2]
    seen = [entry.resource.id for page in pages for entry in page.entry]
    assert sorted(seen) == sorted(created) and len(set(seen)) == 12
    assert pages[0].total == 12

    noshow = Appointment.where({"patient.identifier": f"{NHS}|{synthetic_nhs_number(711)}", "status": "noshow"})
    assert len(list(noshow.perform_resources_iter(server))) == 6
    assert [p.id for p in Patient.where({"_has:Appointment:patient:status": "booked"})
            .perform_resources_iter(server)] == [child.id]

    # _include: fhirclient's include() only takes an element of type Reference (Appointment has
    # none called `patient`: it is participant.actor), so the parameter goes in the struct.
    bundle = next(Appointment.where({"status": "booked", "_include": "Appointment:patient"}).perform_iter(server))
    assert {(e.resource.resource_type, e.search.mode) for e in bundle.entry} == {("Appointment", "match"),
                                                                                 ("Patient", "include")}

    everything = Bundle.read_from(f"Patient/{child.id}/$everything", server)
    ids = {(e.resource.resource_type, e.resource.id) for e in everything.entry}
    expected = {("Patient", child.id)} | {("Appointment", a) for a in created}
    assert expected <= ids
    # Whatever else is there the safeguarding rules raised about this child's no-shows.
    assert {rtype for rtype, _ in ids - expected} <= {"Flag", "Task", "Device"}

    # A transaction with a urn:uuid reference, posted to the base by fhirclient's create().
    transaction = Bundle({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d7a2c5e-8c1b-4d7e-9a51-000000000713", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": NHS, "value": synthetic_nhs_number(713)}],
                      "name": [{"family": "Norcross"}]}},
        {"request": {"method": "POST", "url": "Appointment"},
         "resource": {"resourceType": "Appointment", "status": "noshow", "start": "2025-03-20T09:00:00Z",
                      "end": "2025-03-20T09:30:00Z", "participant": [
                          {"actor": {"reference": "urn:uuid:0d7a2c5e-8c1b-4d7e-9a51-000000000713"},
                           "status": "accepted"}]}}]})
    response = Bundle(transaction.create(server))
    assert response.type == "transaction-response"
    patient_id = response.entry[0].response.location.split("/")[1]
    appointment = Appointment.read(response.entry[1].response.location.split("/")[1], server)
    assert appointment.participant[0].actor.reference == f"Patient/{patient_id}"
    assert [a.id for a in Appointment.where({"patient.identifier": f"{NHS}|{synthetic_nhs_number(713)}"})
            .perform_resources_iter(server)] == [appointment.id]
