"""Real clients against the real server: the fhirpy library a GP supplier might use,
and plain httpx, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fhirpy import AsyncFHIRClient, SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, OperationOutcome, ResourceNotFound

from gateway.synthetic import synthetic_nhs_number

NHS = "https://fhir.nhs.uk/Id/nhs-number"


def test_fhirpy_create_read_update_search_delete(gateway):
    client = SyncFHIRClient(gateway.fhir)
    child = client.resource("Patient", identifier=[{"system": NHS, "value": synthetic_nhs_number(1)}],
                            name=[{"family": "Rivers", "given": ["Mia"]}], gender="female")
    child.save()
    assert child.id and child["meta"]["versionId"] == "1"

    read = client.reference("Patient", child.id).to_resource()
    assert read["name"][0]["family"] == "Rivers"

    read["gender"] = "other"
    read.save()
    assert read["meta"]["versionId"] == "2"
    assert client.reference("Patient", child.id).to_resource()["gender"] == "other"

    found = client.resources("Patient").search(identifier=f"{NHS}|{synthetic_nhs_number(1)}").fetch_all()
    assert [p.id for p in found] == [child.id]

    appointment = client.resource("Appointment", status="noshow", start="2025-06-02T10:30:00Z",
                                  end="2025-06-02T11:00:00Z",
                                  participant=[{"actor": child.to_reference(), "status": "accepted"}])
    appointment.save()
    assert [a.id for a in client.resources("Appointment").search(patient=child.id).fetch_all()] == [appointment.id]

    read.delete()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", child.id).to_resource()
    assert client.resources("Patient").search(identifier=f"{NHS}|{synthetic_nhs_number(1)}").fetch_all() == []


def test_fhirpy_sees_validation_errors_and_conditional_create(gateway):
    client = SyncFHIRClient(gateway.fhir)
    with pytest.raises(OperationOutcome) as caught:
        client.resource("Appointment", status="arrived-ish", participant=[{"status": "accepted"}]).save()
    assert "arrived-ish" in str(caught.value)
    resource = client.resource("Patient", identifier=[{"system": NHS, "value": synthetic_nhs_number(2)}])
    by_nhs = client.resources("Patient").search(identifier=f"{NHS}|{synthetic_nhs_number(2)}")
    first, created = by_nhs.get_or_create(resource)
    again, created_again = by_nhs.get_or_create(resource)
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


# --- fhirpy against the search, paging, transaction, concurrency and $everything APIs ----------
# Synthetic children only: NHS numbers from the 999 test range (valid mod-11 check digits).

def _nhs(n: int) -> str:
    return synthetic_nhs_number(n)


def _child(client, n: int, family: str):
    child = client.resource("Patient", identifier=[{"system": NHS, "value": _nhs(n)}],
                            name=[{"family": family, "given": ["Test"]}], gender="female", birthDate="2016-04-01")
    child.save()
    return child


def _appointment(client, child, status: str, start: str, practitioner=None):
    participants = [{"actor": child.to_reference(), "status": "accepted"}]
    if practitioner is not None:
        participants.append({"actor": practitioner.to_reference(), "status": "accepted"})
    appointment = client.resource("Appointment", status=status, start=start, end=start.replace(":00:00", ":30:00"),
                                  participant=participants)
    appointment.save()
    return appointment


def test_fhirpy_chained_search_has_include_and_count(gateway):
    client = SyncFHIRClient(gateway.fhir)
    doctor = client.resource("Practitioner", name=[{"family": "Fenwick", "given": ["Ada"]}])
    doctor.save()
    amara, ben, cara = (_child(client, 101, "Ashworth"), _child(client, 102, "Bellamy"), _child(client, 103, "Carr"))
    a1 = _appointment(client, amara, "noshow", "2025-06-02T10:00:00Z", doctor)
    a2 = _appointment(client, amara, "fulfilled", "2025-06-09T10:00:00Z", doctor)
    b1 = _appointment(client, ben, "noshow", "2025-06-03T10:00:00Z")
    _appointment(client, cara, "booked", "2025-07-01T10:00:00Z")

    def ids(search) -> list[str]:
        return sorted(r.id for r in search.fetch_all())

    # Chained search, three spellings a client might use; all send patient.identifier=system|value.
    by_nhs = f"{NHS}|{_nhs(101)}"
    assert ids(client.resources("Appointment").search(**{"patient.identifier": by_nhs})) == sorted([a1.id, a2.id])
    assert ids(client.resources("Appointment").search(patient__identifier=by_nhs)) == sorted([a1.id, a2.id])
    assert ids(client.resources("Appointment").search(patient__Patient__identifier=by_nhs, status="noshow")) \
        == [a1.id]
    assert ids(client.resources("Appointment").search(**{"actor:Patient.identifier": f"{NHS}|{_nhs(102)}"})) \
        == [b1.id]

    # Reverse chain: the children with a missed appointment.
    assert ids(client.resources("Patient").has("Appointment", "patient", status="noshow")) \
        == sorted([amara.id, ben.id])
    assert ids(client.resources("Patient").search(**{"_has:Appointment:patient:status": "booked"})) == [cara.id]

    # _include / _revinclude: fhirpy's fetch() keeps only the searched type, fetch_raw() has the rest.
    bundle = client.resources("Appointment").search(status="noshow").include("Appointment", "patient").fetch_raw()
    modes = {(e.resource.resourceType, e.resource.id): e.search.mode for e in bundle.entry}
    assert modes == {("Appointment", a1.id): "match", ("Appointment", b1.id): "match",
                     ("Patient", amara.id): "include", ("Patient", ben.id): "include"}
    bundle = client.resources("Patient").search(identifier=by_nhs).revinclude("Appointment", "patient").fetch_raw()
    assert sorted((e.resource.resourceType, e.resource.id) for e in bundle.entry) == sorted(
        [("Patient", amara.id), ("Appointment", a1.id), ("Appointment", a2.id)])
    bundle = client.resources("Appointment").search(status="noshow") \
        .include("Appointment", "actor", "Practitioner").fetch_raw()
    assert [e.resource.id for e in bundle.entry if e.search.mode == "include"] == [doctor.id]

    # count(): fhirpy sends _count=0&_totalMethod=count (not R4; accepted and ignored).
    assert client.resources("Appointment").count() == 4
    assert client.resources("Appointment").search(status="noshow").count() == 2
    assert client.resources("Patient").has("Appointment", "patient", status="noshow").count() == 2
    assert client.resources("Appointment").search(patient__identifier=f"{NHS}|{_nhs(999)}").count() == 0
    assert client.resources("Appointment").search(status="noshow").first().id in (a1.id, b1.id)


def test_fhirpy_pages_through_every_page_exactly_once(gateway):
    client = SyncFHIRClient(gateway.fhir)
    child = _child(client, 201, "Dunmore")
    created = [_appointment(client, child, "noshow", f"2025-05-{day:02d}T09:00:00Z").id for day in range(1, 24)]
    search = client.resources("Appointment").search(patient=child.id).limit(5)

    # fhirpy's own iteration follows every `next` link.
    seen = [a.id for a in search.fetch_all()]
    assert len(seen) == 23 and sorted(seen) == sorted(created)
    assert [a.id for a in search.sort("-date")] == list(reversed(created))

    # By hand: page after page through the Bundle links, the total on the first page only.
    pages, seen = [], []
    bundle = search.sort("date").fetch_raw()
    assert bundle.total == 23
    while True:
        pages.append(len(bundle.entry))
        seen += [e.resource.id for e in bundle.entry]
        next_link = [link.url for link in bundle.link if link.relation == "next"]
        if not next_link:
            break
        assert next_link[0].startswith(gateway.fhir + "/Appointment?")
        # Writes between pages never shift a page (keyset paging): a new, later appointment
        # shows up once at the end, nothing is repeated or skipped.
        if len(pages) == 2:
            created.append(_appointment(client, child, "booked", "2025-06-30T09:00:00Z").id)
        bundle = client.execute(next_link[0], method="get")
    assert pages == [5, 5, 5, 5, 4]
    assert seen == created
    assert len(set(seen)) == len(seen) == 24

    # Same via _has and a chain, with _count=1 (one request per resource).
    assert sorted(p.id for p in client.resources("Patient").has("Appointment", "patient", status="noshow")
                  .limit(1).fetch_all()) == [child.id]
    assert len(client.resources("Appointment").search(patient__identifier=f"{NHS}|{_nhs(201)}")
               .limit(7).fetch_all()) == 24


def test_fhirpy_transaction_with_urn_uuid_references(gateway):
    client = SyncFHIRClient(gateway.fhir)
    patient_urn, doctor_urn, appt_urn = (f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    entries = [
        # The appointment comes first: references resolve whatever the entry order.
        {"fullUrl": appt_urn, "request": {"method": "POST", "url": "Appointment"},
         "resource": {"resourceType": "Appointment", "status": "noshow", "start": "2025-06-02T10:00:00Z",
                      "end": "2025-06-02T10:30:00Z",
                      "participant": [{"actor": {"reference": patient_urn}, "status": "accepted"},
                                      {"actor": {"reference": doctor_urn}, "status": "accepted"}]}},
        {"fullUrl": patient_urn, "request": {"method": "POST", "url": "Patient",
                                             "ifNoneExist": f"identifier={NHS}|{_nhs(301)}"},
         "resource": {"resourceType": "Patient", "identifier": [{"system": NHS, "value": _nhs(301)}],
                      "name": [{"family": "Ellery"}]}},
        {"fullUrl": doctor_urn, "request": {"method": "POST", "url": "Practitioner"},
         "resource": {"resourceType": "Practitioner", "name": [{"family": "Garside"}]}},
        {"request": {"method": "POST", "url": "Flag"},
         "resource": {"resourceType": "Flag", "status": "active", "subject": {"reference": patient_urn},
                      "code": {"text": "Was not brought"}}},
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    # fhirpy's own way: save() a Bundle POSTs it to the base.
    response = client.resource("Bundle", **bundle).save()
    assert response.type == "transaction-response"
    assert [e.response.status.split()[0] for e in response.entry] == ["201"] * 4
    appt_id, patient_id, doctor_id, flag_id = (e.response.location.split("/")[1] for e in response.entry)

    appointment = client.reference("Appointment", appt_id).to_resource()
    assert [p.actor.reference for p in appointment.participant] == [f"Patient/{patient_id}",
                                                                    f"Practitioner/{doctor_id}"]
    assert client.reference("Flag", flag_id).to_resource().subject.reference == f"Patient/{patient_id}"
    assert not any("urn:uuid" in str(r.serialize()) for r in
                   client.resources("Appointment").search(patient=patient_id).fetch_all())
    # The references are indexed: chained search finds the appointment by the child's NHS number.
    assert [a.id for a in client.resources("Appointment").search(patient__identifier=f"{NHS}|{_nhs(301)}")
            .fetch_all()] == [appt_id]

    # The same bundle through client.execute: the patient now exists (ifNoneExist -> 200), the rest is new.
    again = client.execute(gateway.fhir, method="post", data=bundle)
    assert [e.response.status.split()[0] for e in again.entry] == ["201", "200", "201", "201"]
    assert again.entry[1].response.location.split("/")[1] == patient_id
    second = client.reference("Appointment", again.entry[0].response.location.split("/")[1]).to_resource()
    assert second.participant[0].actor.reference == f"Patient/{patient_id}"

    # A failing entry rolls the whole transaction back; fhirpy raises the OperationOutcome.
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Patient"},
         "resource": {"resourceType": "Patient", "name": [{"family": "Rollback"}]}},
        {"request": {"method": "POST", "url": "Appointment"},
         "resource": {"resourceType": "Appointment", "status": "not-a-status", "participant": [
             {"actor": {"reference": f"urn:uuid:{uuid.uuid4()}"}, "status": "accepted"}]}}]}
    with pytest.raises(OperationOutcome) as caught:
        client.execute("", method="post", data=bad)
    assert "Bundle.entry[1]" in str(caught.value)
    assert client.resources("Patient").search(family="Rollback").count() == 0


def test_fhirpy_if_match_conflict(gateway):
    client = SyncFHIRClient(gateway.fhir)
    child = _child(client, 401, "Fairley")
    mine = client.reference("Patient", child.id).to_resource()
    theirs = client.reference("Patient", child.id).to_resource()
    assert mine["meta"]["versionId"] == theirs["meta"]["versionId"] == "1"

    theirs["gender"] = "other"
    theirs.save()
    assert theirs["meta"]["versionId"] == "2"

    # fhirpy's save() sends no If-Match: a plain save is last-writer-wins.  A client that
    # wants optimistic locking adds the header (extra_headers) for the version it holds.
    stale = SyncFHIRClient(gateway.fhir, extra_headers={"If-Match": f'W/"{mine["meta"]["versionId"]}"'})
    mine = stale.resource("Patient", **mine.serialize())
    mine["name"][0]["family"] = "Fairley-Stale"
    # fhirpy maps every 412 to MultipleResourcesFound (its get_or_create meaning); the body is
    # the server's OperationOutcome.
    with pytest.raises(MultipleResourcesFound) as caught:
        mine.save()
    assert "If-Match failed" in str(caught.value) and "is at version 2, not 1" in str(caught.value)
    current = client.reference("Patient", child.id).to_resource()
    assert current["meta"]["versionId"] == "2" and current["name"][0]["family"] == "Fairley"

    # With the current version it goes through.
    fresh = SyncFHIRClient(gateway.fhir, extra_headers={"If-Match": 'W/"2"'})
    current = fresh.resource("Patient", **current.serialize())
    current["name"][0]["family"] = "Fairley-Smith"
    current.save()
    assert current["meta"]["versionId"] == "3"

    # Someone deletes it; an update with If-Match of what we held is a 409 conflict -> OperationOutcome.
    client.reference("Patient", child.id).delete()
    held = SyncFHIRClient(gateway.fhir, extra_headers={"If-Match": 'W/"3"'})
    with pytest.raises(OperationOutcome):
        held.resource("Patient", **current.serialize()).save()
    with pytest.raises(ResourceNotFound):
        client.reference("Patient", child.id).to_resource()


def test_fhirpy_everything(gateway):
    client = SyncFHIRClient(gateway.fhir)
    doctor = client.resource("Practitioner", name=[{"family": "Hale"}])
    doctor.save()
    child, other = _child(client, 501, "Gilmore"), _child(client, 502, "Hollis")
    mine = {_appointment(client, child, s, f"2025-06-{d:02d}T10:00:00Z", doctor).id
            for d, s in ((2, "noshow"), (9, "noshow"), (16, "fulfilled"))}
    _appointment(client, other, "noshow", "2025-06-03T10:00:00Z", doctor)
    flag = client.resource("Flag", status="active", subject=child.to_reference(), code={"text": "Was not brought"})
    flag.save()

    def refs(bundle) -> set[tuple[str, str]]:
        return {(e.resource.resourceType, e.resource.id) for e in bundle.entry}

    everything = client.execute(f"Patient/{child.id}/$everything", method="get")
    assert everything.resourceType == "Bundle" and everything.type == "searchset"
    expected = {("Patient", child.id), ("Practitioner", doctor.id), ("Flag", flag.id)} | {
        ("Appointment", a) for a in mine}
    # Two WNBs: the safeguarding rules also raised their Flag and review Task, authored by the gateway.
    extras = refs(everything) - expected
    assert expected <= refs(everything)
    assert {rtype for rtype, _ in extras} == {"Flag", "Task", "Device"}
    assert refs(client.reference("Patient", child.id).execute("$everything", method="get")) == refs(everything)
    assert {r for r in refs(client.execute(f"Patient/{child.id}/$everything", method="get",
                                           params={"_type": "Appointment"}))} == {("Appointment", a) for a in mine}

    # Paging $everything with the client, following next links.
    seen, bundle = [], client.execute(f"Patient/{child.id}/$everything", method="get", params={"_count": 2})
    while True:
        seen += [(e.resource.resourceType, e.resource.id) for e in bundle.entry]
        next_link = [link.url for link in bundle.link if link.relation == "next"]
        if not next_link:
            break
        bundle = client.execute(next_link[0], method="get")
    assert len(seen) == len(set(seen)) and set(seen) == refs(everything)

    with pytest.raises(ResourceNotFound):
        client.execute("Patient/no-such-child/$everything", method="get")


async def test_fhirpy_async_client(gateway):
    client = AsyncFHIRClient(gateway.fhir)
    child = client.resource("Patient", identifier=[{"system": NHS, "value": _nhs(601)}],
                            name=[{"family": "Ibbotson"}], gender="male")
    await child.save()
    created = []
    for day in range(1, 13):
        appointment = client.resource("Appointment", status="noshow" if day % 3 else "fulfilled",
                                      start=f"2025-04-{day:02d}T09:00:00Z", end=f"2025-04-{day:02d}T09:30:00Z",
                                      participant=[{"actor": child.to_reference(), "status": "accepted"}])
        await appointment.save()
        created.append(appointment.id)

    chained = client.resources("Appointment").search(patient__identifier=f"{NHS}|{_nhs(601)}")
    every = [a.id async for a in chained.limit(5)]
    assert sorted(every) == sorted(created) and len(every) == 12
    assert sorted(a.id for a in await chained.limit(4).fetch_all()) == sorted(created)
    assert await chained.count() == 12
    assert await chained.search(status="noshow").count() == 8
    assert [p.id for p in await client.resources("Patient").has("Appointment", "patient", status="noshow")
            .fetch_all()] == [child.id]

    everything = await client.execute(f"Patient/{child.id}/$everything", method="get")
    assert {e.resource.id for e in everything.entry if e.resource.resourceType == "Appointment"} == set(created)

    read = await client.reference("Patient", child.id).to_resource()
    stale = AsyncFHIRClient(gateway.fhir, extra_headers={"If-Match": 'W/"1"'}).resource("Patient", **read.serialize())
    read["gender"] = "other"
    await read.save()
    with pytest.raises(MultipleResourcesFound):
        await stale.save()

    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    response = await client.execute("", method="post", data={
        "resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": patient_urn, "request": {"method": "POST", "url": "Patient"},
             "resource": {"resourceType": "Patient", "name": [{"family": "Jessop"}]}},
            {"request": {"method": "POST", "url": "Flag"},
             "resource": {"resourceType": "Flag", "status": "active", "code": {"text": "Was not brought"},
                          "subject": {"reference": patient_urn}}}]})
    patient_id = response.entry[0].response.location.split("/")[1]
    flag = await client.reference("Flag", response.entry[1].response.location.split("/")[1]).to_resource()
    assert flag.subject.reference == f"Patient/{patient_id}"
