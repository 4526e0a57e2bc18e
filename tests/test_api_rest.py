"""The FHIR R4 RESTful interactions over real HTTP, on SQLite and on PostgreSQL:
create, read, vread, update, delete, history, conditional operations, Prefer,
validation, formats, and the CapabilityStatement that describes them."""

from __future__ import annotations

import time

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from gateway.store.reading import read_only

FHIR_JSON = {"Content-Type": "application/fhir+json"}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def patient(nhs: str = "9434765919", **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": NHS, "value": nhs}],
            "name": [{"family": "Rivers", "given": ["Mia"]}], "gender": "female", "birthDate": "2019-03-04",
            **extra}


def appointment(patient_id: str, status: str = "booked") -> dict:
    return {"resourceType": "Appointment", "status": status, "start": "2025-06-02T10:30:00+01:00",
            "end": "2025-06-02T11:00:00+01:00",
            "participant": [{"actor": {"reference": f"Patient/{patient_id}"}, "status": "accepted"}]}


def create(http, resource: dict, **headers: str) -> dict:
    response = http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def versions_of(gw, res_type: str, res_id: str) -> list[int]:
    with read_only(gw.engine) as uow:
        rows = uow.fetchall("SELECT version_id FROM resource_versions WHERE res_type=? AND res_id=? "
                            "ORDER BY version_id", (res_type, res_id))
    return [r[0] for r in rows]


# --- create / read / vread / update / delete ----------------------------------------------
def test_create_assigns_id_and_version_and_answers_201_with_location(gateway):
    with gateway.http() as http:
        response = http.post("/fhir/Patient", json=patient(id="client-chosen"), headers=FHIR_JSON)
        assert response.status_code == 201
        body = response.json()
        assert body["id"] != "client-chosen"  # the server assigns ids on create
        assert body["meta"]["versionId"] == "1"
        assert response.headers["location"] == f"{gateway.fhir}/Patient/{body['id']}/_history/1"
        assert response.headers["etag"] == 'W/"1"'
        assert response.headers["last-modified"].endswith("GMT")
        assert response.headers["content-type"].startswith("application/fhir+json")
        read = http.get(f"/fhir/Patient/{body['id']}")
        assert read.status_code == 200
        assert read.json() == body
        assert read.headers["etag"] == 'W/"1"'


def test_update_makes_a_new_version_and_vread_keeps_the_old(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        changed = {**created, "gender": "other"}
        response = http.put(f"/fhir/Patient/{created['id']}", json=changed)
        assert response.status_code == 200
        assert response.headers["etag"] == 'W/"2"'
        assert response.headers["location"].endswith(f"/Patient/{created['id']}/_history/2")
        assert response.json()["gender"] == "other"
        assert http.get(f"/fhir/Patient/{created['id']}/_history/1").json()["gender"] == "female"
        assert http.get(f"/fhir/Patient/{created['id']}/_history/2").json()["gender"] == "other"
        assert http.get(f"/fhir/Patient/{created['id']}/_history/3").status_code == 404


def test_update_as_create_answers_201_then_200(gateway):
    with gateway.http() as http:
        first = http.put("/fhir/Patient/child-1", json=patient(id="child-1"))
        assert first.status_code == 201
        assert first.json()["id"] == "child-1"
        assert first.headers["location"].endswith("/Patient/child-1/_history/1")
        second = http.put("/fhir/Patient/child-1", json=patient(id="child-1", gender="other"))
        assert second.status_code == 200
        assert second.json()["meta"]["versionId"] == "2"


def test_update_id_must_match_url(gateway):
    with gateway.http() as http:
        mismatch = http.put("/fhir/Patient/child-2", json=patient(id="someone-else"))
        assert mismatch.status_code == 400
        assert mismatch.json()["resourceType"] == "OperationOutcome"
        missing = http.put("/fhir/Patient/child-2", json=patient())
        assert missing.status_code == 400
        assert http.get("/fhir/Patient/child-2").status_code == 404


def test_server_owns_version_and_last_updated_but_keeps_client_meta(gateway):
    with gateway.http() as http:
        meta = {"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z", "source": "urn:gp:system-x",
                "tag": [{"system": "urn:t", "code": "sandbox"}], "profile": ["http://example.org/p"]}
        body = create(http, patient(meta=meta))
        assert body["meta"]["versionId"] == "1"
        assert body["meta"]["lastUpdated"] != "2001-01-01T00:00:00Z"
        assert body["meta"]["source"] == "urn:gp:system-x"
        assert body["meta"]["tag"] == meta["tag"] and body["meta"]["profile"] == meta["profile"]
        plain = create(http, patient(nhs="9434765870"))
        assert "source" not in plain["meta"]


def test_delete_then_read_is_410_and_history_keeps_the_deletion(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        response = http.delete(f"/fhir/Patient/{created['id']}")
        assert response.status_code == 204
        assert response.headers["etag"] == 'W/"2"'
        assert http.get(f"/fhir/Patient/{created['id']}").status_code == 410
        assert http.get(f"/fhir/Patient/{created['id']}/_history/2").status_code == 410
        assert http.get(f"/fhir/Patient/{created['id']}/_history/1").status_code == 200
        # deleting again (or deleting the unknown) is fine and writes nothing
        assert http.delete(f"/fhir/Patient/{created['id']}").status_code == 204
        assert http.delete("/fhir/Patient/never-was").status_code == 204
        assert versions_of(gateway, "Patient", created["id"]) == [1, 2]
        found = http.get("/fhir/Patient", params={"identifier": f"{NHS}|9434765919"}).json()
        assert found.get("entry", []) == []


def test_update_revives_a_deleted_resource_as_a_new_version(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        http.delete(f"/fhir/Patient/{created['id']}")
        revived = http.put(f"/fhir/Patient/{created['id']}", json={**created, "gender": "other"})
        assert revived.status_code == 201
        assert revived.json()["meta"]["versionId"] == "3"
        assert http.get(f"/fhir/Patient/{created['id']}").status_code == 200


def test_delete_with_prefer_operation_outcome_answers_200(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        response = http.delete(f"/fhir/Patient/{created['id']}", headers={"Prefer": "return=OperationOutcome"})
        assert response.status_code == 200
        issue = response.json()["issue"][0]
        assert issue["severity"] == "information"
        assert created["id"] in issue["diagnostics"]


# --- concurrency ----------------------------------------------------------------------------
def test_if_match_stale_version_is_412_and_nothing_is_written(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        url = f"/fhir/Patient/{created['id']}"
        ok = http.put(url, json={**created, "gender": "other"}, headers={"If-Match": 'W/"1"'})
        assert ok.status_code == 200
        stale = http.put(url, json={**created, "gender": "male"}, headers={"If-Match": 'W/"1"'})
        assert stale.status_code == 412
        assert stale.json()["resourceType"] == "OperationOutcome"
        assert http.get(url).json()["gender"] == "other"
        assert http.delete(url, headers={"If-Match": 'W/"1"'}).status_code == 412
        assert http.get(url).status_code == 200
        assert http.delete(url, headers={"If-Match": 'W/"2"'}).status_code == 204
        assert versions_of(gateway, "Patient", created["id"]) == [1, 2, 3]


def test_if_match_on_a_deleted_resource_is_409(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        http.delete(f"/fhir/Patient/{created['id']}")
        response = http.put(f"/fhir/Patient/{created['id']}", json=created, headers={"If-Match": 'W/"2"'})
        assert response.status_code == 409
        assert http.put("/fhir/Patient/nobody", json=patient(id="nobody"),
                        headers={"If-Match": 'W/"1"'}).status_code == 412


def test_conditional_create_creates_once_then_returns_the_existing(gateway):
    condition = {"If-None-Exist": f"identifier={NHS}|9434765919"}
    with gateway.http() as http:
        first = http.post("/fhir/Patient", json=patient(), headers=condition)
        assert first.status_code == 201
        second = http.post("/fhir/Patient", json=patient(gender="male"), headers=condition)
        assert second.status_code == 200
        assert second.json()["id"] == first.json()["id"]
        assert second.json()["gender"] == "female"  # nothing was written
        assert versions_of(gateway, "Patient", first.json()["id"]) == [1]
        # two matches: 412
        create(http, patient(nhs="9434765870", name=[{"family": "Twin"}]))
        create(http, patient(nhs="9434765889", name=[{"family": "Twin"}]))
        ambiguous = http.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "family=Twin"})
        assert ambiguous.status_code == 412
        bad = http.post("/fhir/Patient", json=patient(), headers={"If-None-Exist": "no-such-param=1"})
        assert bad.status_code == 400


def test_conditional_update_creates_updates_or_refuses(gateway):
    criteria = {"identifier": f"{NHS}|9434765919"}
    with gateway.http() as http:
        created = http.put("/fhir/Patient", params=criteria, json=patient())
        assert created.status_code == 201
        pid = created.json()["id"]
        updated = http.put("/fhir/Patient", params=criteria, json=patient(gender="other"))
        assert updated.status_code == 200
        assert updated.json()["id"] == pid
        assert updated.json()["meta"]["versionId"] == "2"
        create(http, patient(nhs="9434765870", name=[{"family": "Twin"}]))
        create(http, patient(nhs="9434765889", name=[{"family": "Twin"}]))
        assert http.put("/fhir/Patient", params={"family": "Twin"}, json=patient()).status_code == 412
        assert http.put("/fhir/Patient", json=patient()).status_code == 400  # no criteria


def test_conditional_delete_deletes_every_match(gateway):
    with gateway.http() as http:
        one = create(http, patient(nhs="9434765870", name=[{"family": "Twin"}]))
        two = create(http, patient(nhs="9434765889", name=[{"family": "Twin"}]))
        keep = create(http, patient())
        assert http.delete("/fhir/Patient", params={"family": "Twin"}).status_code == 204
        assert http.get(f"/fhir/Patient/{one['id']}").status_code == 410
        assert http.get(f"/fhir/Patient/{two['id']}").status_code == 410
        assert http.get(f"/fhir/Patient/{keep['id']}").status_code == 200
        assert http.delete("/fhir/Patient", params={"family": "Nobody"}).status_code == 204
        assert http.delete("/fhir/Patient").status_code == 400


# --- Prefer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prefer", ["minimal", "representation", "OperationOutcome", None])
def test_prefer_return_shapes_the_write_response(gateway, prefer):
    headers = {"Prefer": f"return={prefer}"} if prefer else {}
    with gateway.http() as http:
        response = http.post("/fhir/Patient", json=patient(), headers=headers)
        assert response.status_code == 201
        assert response.headers["etag"] == 'W/"1"'
        location = response.headers["location"]
        if prefer == "minimal":
            assert response.content == b""
        elif prefer == "OperationOutcome":
            assert response.json()["resourceType"] == "OperationOutcome"
            assert response.json()["issue"][0]["severity"] == "information"
        else:
            assert response.json()["resourceType"] == "Patient"
        assert http.get(location.replace(gateway.fhir, "/fhir")).status_code == 200


# --- validation and formats -----------------------------------------------------------------
def test_invalid_code_is_422_naming_the_element(gateway):
    with gateway.http() as http:
        bad = create(http, patient())
        response = http.post("/fhir/Appointment", json=appointment(bad["id"], status="arrived-ish"))
        assert response.status_code == 422
        issues = response.json()["issue"]
        assert [i["expression"] for i in issues] == [["Appointment.status"]]
        assert "arrived-ish" in issues[0]["diagnostics"]
        nested = appointment(bad["id"])
        nested["participant"][0]["status"] = "maybe"
        nested["start"] = "not a date"
        response = http.post("/fhir/Appointment", json=nested)
        assert response.status_code == 422
        expressions = sorted(e for i in response.json()["issue"] for e in i["expression"])
        assert expressions == ["Appointment.start"]  # structure errors come first; codes once it parses
        nested["start"] = "2025-06-02T10:30:00Z"
        response = http.post("/fhir/Appointment", json=nested)
        assert [i["expression"] for i in response.json()["issue"]] == [["Appointment.participant[0].status"]]
        assert http.get("/fhir/Appointment").json().get("entry", []) == []


def test_unknown_element_and_wrong_datatype_are_422(gateway):
    with gateway.http() as http:
        response = http.post("/fhir/Patient", json=patient(favouriteColour="blue", name=[{"family": 7}]))
        assert response.status_code == 422
        expressions = sorted(e for i in response.json()["issue"] for e in i["expression"])
        assert expressions == ["Patient.favouriteColour", "Patient.name[0].family"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"Patient"', b""])
def test_body_that_is_not_a_json_object_is_400(gateway, body):
    with gateway.http() as http:
        response = http.post("/fhir/Patient", content=body, headers=FHIR_JSON)
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"


def test_wrong_resource_type_is_400_and_unknown_type_404(gateway):
    with gateway.http() as http:
        assert http.post("/fhir/Patient", json={"resourceType": "Appointment", "status": "booked",
                                                 "participant": []}).status_code == 400
        assert http.post("/fhir/Unicorn", json={"resourceType": "Unicorn"}).status_code == 404


def test_xml_is_415_on_writes_and_406_on_reads(gateway):
    with gateway.http() as http:
        response = http.post("/fhir/Patient", content=b"<Patient xmlns='http://hl7.org/fhir'/>",
                             headers={"Content-Type": "application/fhir+xml"})
        assert response.status_code == 415
        assert "XML" in response.json()["issue"][0]["diagnostics"]
        assert http.post("/fhir/Patient", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
        created = create(http, patient())
        assert http.get(f"/fhir/Patient/{created['id']}", params={"_format": "xml"}).status_code == 406
        assert http.get(f"/fhir/Patient/{created['id']}",
                        headers={"Accept": "application/fhir+xml"}).status_code == 406
        assert http.get(f"/fhir/Patient/{created['id']}", params={"_format": "json"}).status_code == 200
        plain = http.post("/fhir/Patient", json=patient(), headers={"Content-Type": "application/json"})
        assert plain.status_code == 201


def test_pretty_output(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        pretty = http.get(f"/fhir/Patient/{created['id']}", params={"_pretty": "true"})
        assert b"\n  " in pretty.content
        assert b"\n" not in http.get(f"/fhir/Patient/{created['id']}").content


def test_unsupported_method_is_405_operation_outcome(gateway):
    with gateway.http() as http:
        response = http.patch("/fhir/Patient/x", json={})
        assert response.status_code == 405
        assert response.json()["resourceType"] == "OperationOutcome"
        assert http.delete("/fhir").status_code == 405


def test_api_noshow_write_puts_an_event_in_the_outbox(gateway):
    with gateway.http() as http:
        child = create(http, patient())
        booked = create(http, appointment(child["id"]))
        with read_only(gateway.engine) as uow:
            assert uow.fetchall("SELECT topic FROM outbox_events") == []
        response = http.put(f"/fhir/Appointment/{booked['id']}", json={**booked, "status": "noshow"})
        assert response.status_code == 200
    with read_only(gateway.engine) as uow:
        events = uow.fetchall("SELECT topic, focus_id, focus_version, patient_id FROM outbox_events")
    assert events == [("appointment-noshow", booked["id"], 2, child["id"])]


# --- history --------------------------------------------------------------------------------
def test_instance_history_newest_first_with_deletion(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        http.put(f"/fhir/Patient/{created['id']}", json={**created, "gender": "other"})
        http.delete(f"/fhir/Patient/{created['id']}")
        bundle = http.get(f"/fhir/Patient/{created['id']}/_history").json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
        entries = bundle["entry"]
        assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
        assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
        assert "resource" not in entries[0]
        assert entries[1]["resource"]["gender"] == "other"
        assert entries[2]["request"]["url"] == "Patient"
        assert entries[0]["fullUrl"] == f"{gateway.fhir}/Patient/{created['id']}"
        assert entries[2]["response"]["status"].startswith("201")
        assert entries[2]["response"]["lastModified"] == created["meta"]["lastUpdated"]
        assert http.get("/fhir/Patient/nobody/_history").status_code == 404


def test_type_and_system_history_and_since(gateway):
    with gateway.http() as http:
        child = create(http, patient())
        time.sleep(0.01)
        appt = create(http, appointment(child["id"]))
        type_history = http.get("/fhir/Appointment/_history").json()
        assert [e["resource"]["id"] for e in type_history["entry"]] == [appt["id"]]
        system = http.get("/fhir/_history").json()
        assert [e["fullUrl"].rsplit("/", 2)[-2] for e in system["entry"]] == ["Appointment", "Patient"]
        since = http.get("/fhir/_history", params={"_since": appt["meta"]["lastUpdated"]}).json()
        assert [e["resource"]["id"] for e in since["entry"]] == [appt["id"]]
        assert http.get("/fhir/_history", params={"_since": "yesterday"}).status_code == 400


def test_history_pages_through_next_links_to_the_end(gateway):
    with gateway.http() as http:
        created = create(http, patient())
        for n in range(6):
            http.put(f"/fhir/Patient/{created['id']}", json={**created, "birthDate": f"201{n}-01-01"})
        other = create(http, patient(nhs="9434765870"))
        seen, url, pages = [], "/fhir/_history?_count=3", 0
        while url:
            bundle = http.get(url).json()
            pages += 1
            assert len(bundle["entry"]) <= 3
            seen += [(e["fullUrl"].rsplit("/", 1)[-1], e["response"]["etag"]) for e in bundle["entry"]]
            nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            url = nxt[0].replace(gateway.fhir, "/fhir") if nxt else None
            if pages == 1:
                # a write while paging neither shifts nor repeats what follows
                create(http, patient(nhs="9434765889"))
        assert pages == 3
        expected = [(other["id"], 'W/"1"')] + [(created["id"], f'W/"{v}"') for v in range(7, 0, -1)]
        assert seen == expected


# --- capabilities ---------------------------------------------------------------------------
def test_capability_statement_is_valid_and_lists_what_is_implemented(gateway):
    with gateway.http() as http:
        statement = http.get("/fhir/metadata").json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    patient_caps = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {i["code"] for i in patient_caps["interaction"]} == {
        "read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"}
    assert patient_caps["versioning"] == "versioned-update"
    assert patient_caps["conditionalCreate"] and patient_caps["conditionalUpdate"]
    assert patient_caps["conditionalDelete"] == "multiple"
    assert patient_caps["updateCreate"] is True and patient_caps["readHistory"] is True
    assert "identifier" in {p["name"] for p in patient_caps["searchParam"]}
