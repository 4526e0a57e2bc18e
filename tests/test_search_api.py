"""FHIR search over real HTTP, on SQLite and PostgreSQL: parameter types, modifiers,
date prefixes, chains, _has, includes, sorting, paging, _total/_summary/_elements,
POST _search, strict vs lenient handling, $everything.

Test data goes in through the store's unit of work (the one write path), so the
index rows are exactly those ingest and the REST API write.
"""

from __future__ import annotations

import base64
from urllib.parse import parse_qsl, urlsplit

import pytest

from gateway import codes

from gateway.store.unit_of_work import unit_of_work

NHS = "https://fhir.nhs.uk/Id/nhs-number"
GMC = "https://fhir.hl7.org.uk/Id/gmc-number"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"
SNOMED = "http://snomed.info/sct"
SERVICE = "https://example.org/service-type"


def _ref(ref: str) -> dict:
    return {"reference": ref}


def _appointment(patient: str, status: str, start: str, *, practitioner: str | None = "Practitioner/d1",
                 location: str | None = None, service: tuple[str, str] = ("CARD", "Paediatric cardiology"),
                 ident: str = "") -> dict:
    participants = [{"actor": _ref(patient), "status": "accepted"}]
    if practitioner:
        participants.append({"actor": _ref(practitioner), "status": "accepted"})
    if location:
        participants.append({"actor": _ref(location), "status": "accepted"})
    return {"status": status, "start": start, "participant": participants,
            "identifier": [{"system": "urn:pas", "value": ident}] if ident else [],
            "serviceType": [{"coding": [{"system": SERVICE, "code": service[0], "display": service[1]}],
                             "text": service[1]}]}


def seed(gw) -> None:
    with unit_of_work(gw.engine) as uow:
        uow.create("Organization", {"name": "Wolverhampton Trust", "identifier": [{"system": ODS, "value": "RL4"}]},
                   res_id="o1")
        uow.create("Practitioner", {"name": [{"family": "Fenwick", "given": ["Ada"]}],
                                    "telecom": [{"system": "phone", "value": "01632 960001"}],
                                    "identifier": [{"system": GMC, "value": "G100"}]}, res_id="d1")
        uow.create("Practitioner", {"name": [{"family": "Garside", "given": ["Tom"]}],
                                    "identifier": [{"system": GMC, "value": "G200"}]}, res_id="d2")
        uow.create("Location", {"name": "Cardiology clinic", "managingOrganization": _ref("Organization/o1")},
                   res_id="l1")
        uow.create("Patient", {"identifier": [{"system": NHS, "value": "9990000018"}],
                               "name": [{"family": "Ashworth", "given": ["Amara"]}], "gender": "female",
                               "birthDate": "2015-03-10", "generalPractitioner": [_ref("Practitioner/d1")],
                               "managingOrganization": _ref("Organization/o1"),
                               "text": {"status": "generated", "div": "<div>Amara</div>"}}, res_id="p1")
        uow.create("Patient", {"identifier": [{"system": NHS, "value": "9990000026"}],
                               "name": [{"family": "Bellamy", "given": ["Ben"]}], "gender": "male",
                               "birthDate": "2016-07-01", "generalPractitioner": [_ref("Practitioner/d2")]},
                   res_id="p2")
        uow.create("Patient", {"name": [{"family": "Élan", "given": ["Chloe"]}], "birthDate": "2016"},
                   res_id="p3")
        uow.create("Appointment", _appointment("Patient/p1", "noshow", "2025-06-02T10:30:00Z", location="Location/l1",
                                               ident="A1"), res_id="a1")
        uow.create("Appointment", _appointment("Patient/p1", "booked", "2025-06-03T09:00:00Z",
                                               service=("DIET", "Dietetics")), res_id="a2")
        uow.create("Appointment", _appointment("Patient/p2", "noshow", "2025-06-02T23:59:59Z",
                                               practitioner="Practitioner/d2"), res_id="a3")
        uow.create("Appointment", _appointment("Patient/p2", "fulfilled", "2025-06-03T00:00:00Z",
                                               practitioner=None), res_id="a4")
        uow.create("Flag", {"status": "active", "subject": _ref("Patient/p1"), "author": _ref("Organization/o1"),
                            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                                      "code": "safety"}]}],
                            "code": {"coding": [{"system": SNOMED, "code": "1064891000000107"}],
                                     "text": "Repeated missed appointments"},
                            "period": {"start": "2025-06-01"}}, res_id="f1")
        uow.create("Flag", {"status": "inactive", "subject": _ref("Patient/p2"),
                            "code": {"text": "Old concern"}}, res_id="f2")
        uow.create("CareTeam", {"status": "active", "subject": _ref("Patient/p1"),
                                "participant": [{"member": _ref("Practitioner/d1"), "role": [
                                    {"coding": [{"system": codes.CARE_TEAM_ROLES,
                                                 "code": codes.ROLE_LEAD_PROFESSIONAL}]}]}]}, res_id="ct1")
        uow.create("CarePlan", {"status": "active", "intent": "plan", "subject": _ref("Patient/p1"),
                                "extension": [{"url": codes.EXT_INFORMATION_EXCHANGE,
                                               "valueMarkdown": "Dr Fenwick phones the family after each review"}],
                                "careTeam": [_ref("CareTeam/ct1")]}, res_id="cp1")
        uow.create("Task", {"status": "requested", "intent": "order", "for": _ref("Patient/p1"),
                            "focus": _ref("Flag/f1"), "owner": _ref("Organization/o1")}, res_id="t1")
        uow.create("Condition", {"subject": _ref("Patient/p1"), "code": {"text": "Complex needs"}}, res_id="c1")
        uow.create("Encounter", {"status": "finished", "class": {"code": "AMB"}, "subject": _ref("Patient/p1")},
                   res_id="e1")
        uow.create("ServiceRequest", {"status": "active", "intent": "order", "subject": _ref("Patient/p1"),
                                      "requester": _ref("Practitioner/d1")}, res_id="sr1")


@pytest.fixture
def gw(gateway):
    seed(gateway)
    return gateway


def get(gw, path: str, params=None, headers=None):
    with gw.http() as http:
        return http.get("/fhir/" + path, params=params, headers=headers)


def match_ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


def search_ids(gw, path: str, params) -> list[str]:
    response = get(gw, path, params)
    assert response.status_code == 200, response.text
    return match_ids(response.json())


# --- types and modifiers -----------------------------------------------------------------

def test_token_forms_or_and_not(gw):
    assert search_ids(gw, "Patient", {"identifier": f"{NHS}|9990000018"}) == ["p1"]
    assert search_ids(gw, "Patient", {"identifier": "9990000026"}) == ["p2"]
    assert search_ids(gw, "Patient", {"identifier": "urn:other|9990000018"}) == []
    assert search_ids(gw, "Patient", {"identifier": f"{NHS}|"}) == ["p1", "p2"]
    assert search_ids(gw, "Appointment", {"status": "noshow,fulfilled"}) == ["a1", "a3", "a4"]
    assert search_ids(gw, "Appointment", [("status", "noshow,booked"), ("status", "booked,fulfilled")]) == ["a2"]
    assert search_ids(gw, "Appointment", {"status:not": "noshow"}) == ["a2", "a4"]
    assert search_ids(gw, "Appointment", {"status:not": "noshow,booked"}) == ["a4"]


def test_token_text_matches_display_and_codeableconcept_text(gw):
    assert search_ids(gw, "Appointment", {"service-type:text": "ardio"}) == []  # a word prefix, not a substring
    assert search_ids(gw, "Appointment", {"service-type:text": "paediatric card"}) == ["a1", "a3", "a4"]
    assert search_ids(gw, "Appointment", {"service-type:text": "DIET"}) == ["a2"]
    assert search_ids(gw, "Flag", {"code:text": "missed"}) == ["f1"]
    assert search_ids(gw, "Flag", {"code:text": "old concern"}) == ["f2"]


def test_string_default_exact_contains_and_accents(gw):
    assert search_ids(gw, "Patient", {"family": "ash"}) == ["p1"]
    assert search_ids(gw, "Patient", {"name": "BEN"}) == ["p2"]
    assert search_ids(gw, "Patient", {"family": "elan"}) == ["p3"]  # accent- and case-folded
    assert search_ids(gw, "Patient", {"family:exact": "Élan"}) == ["p3"]
    assert search_ids(gw, "Patient", {"family:exact": "elan"}) == []
    assert search_ids(gw, "Patient", {"family:exact": "Ashwort"}) == []
    assert search_ids(gw, "Patient", {"family:contains": "llam"}) == ["p2"]
    assert search_ids(gw, "Patient", {"family": "llam"}) == []
    assert search_ids(gw, "Patient", {"given": "amara,chloe"}) == ["p1", "p3"]
    assert search_ids(gw, "Patient", {"family:contains": "%"}) == []  # LIKE wildcards are literal


def test_missing_on_every_type(gw):
    assert search_ids(gw, "Patient", {"gender:missing": "true"}) == ["p3"]
    assert search_ids(gw, "Patient", {"gender:missing": "false"}) == ["p1", "p2"]
    assert search_ids(gw, "Patient", {"general-practitioner:missing": "true"}) == ["p3"]
    assert search_ids(gw, "Appointment", {"practitioner:missing": "true"}) == ["a4"]
    assert search_ids(gw, "Patient", {"identifier:missing": "true"}) == ["p3"]
    assert search_ids(gw, "Flag", {"date:missing": "true"}) == ["f2"]
    assert search_ids(gw, "Patient", {"family:missing": "false"}) == ["p1", "p2", "p3"]
    assert get(gw, "Patient", {"gender:missing": "maybe"}).status_code == 400


def test_reference_forms_type_modifier_and_identifier(gw):
    assert search_ids(gw, "Appointment", {"patient": "Patient/p1"}) == ["a1", "a2"]
    assert search_ids(gw, "Appointment", {"patient": "p2"}) == ["a3", "a4"]
    assert search_ids(gw, "Appointment", {"patient": "http://elsewhere/fhir/Patient/p2"}) == ["a3", "a4"]
    assert search_ids(gw, "Appointment", {"actor:Practitioner": "d1"}) == ["a1", "a2"]
    assert search_ids(gw, "Appointment", {"actor:Location": "d1"}) == []
    assert search_ids(gw, "Appointment", {"actor": "Location/l1"}) == ["a1"]
    assert search_ids(gw, "Flag", {"subject:Patient": "p1"}) == ["f1"]
    assert search_ids(gw, "Appointment", {"patient:identifier": f"{NHS}|9990000018"}) == ["a1", "a2"]
    assert search_ids(gw, "Appointment", {"actor:identifier": f"{GMC}|G200"}) == ["a3"]
    assert search_ids(gw, "Task", {"for": "Patient/p1"}) == ["t1"]


def test_uri_and_id_and_last_updated(gw):
    with unit_of_work(gw.engine) as uow:
        uow.create("Patient", {"meta": {"profile": ["https://fhir.example/StructureDefinition/Child"],
                                        "tag": [{"system": "urn:tags", "code": "synthetic"}]}}, res_id="p9")
    assert search_ids(gw, "Patient", {"_profile": "https://fhir.example/StructureDefinition/Child"}) == ["p9"]
    assert search_ids(gw, "Patient", {"_profile:below": "https://fhir.example/"}) == ["p9"]
    assert search_ids(gw, "Patient", {"_tag": "urn:tags|synthetic"}) == ["p9"]
    assert search_ids(gw, "Patient", {"_id": "p1,p3"}) == ["p1", "p3"]
    assert search_ids(gw, "Patient", {"_lastUpdated": "gt2000-01-01"}) == ["p1", "p2", "p3", "p9"]
    assert search_ids(gw, "Patient", {"_lastUpdated": "lt2000-01-01"}) == []


# --- dates ------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("2025-06-02", ["a1", "a3"]),               # the day contains 10:30 and 23:59:59
    ("eq2025-06-02", ["a1", "a3"]),
    ("2025-06", ["a1", "a2", "a3", "a4"]),
    ("ne2025-06-02", ["a2", "a4"]),
    ("gt2025-06-02", ["a2", "a4"]),               # 00:00:00 on the 3rd is after the 2nd
    ("lt2025-06-03", ["a1", "a3"]),
    ("ge2025-06-03", ["a2", "a4"]),
    ("le2025-06-02", ["a1", "a3"]),
    ("sa2025-06-02T23:59:59Z", ["a2", "a4"]),
    ("eb2025-06-02T23:59:59Z", ["a1"]),
    ("lt2025-06-02T23:59:59Z", ["a1"]),
    ("le2025-06-02T23:59:59Z", ["a1", "a3"]),
    ("gt2025-06-02T23:59:59Z", ["a2", "a4"]),
    ("ge2025-06-03T00:00:00Z", ["a2", "a4"]),
    ("2025-06-02T10:30:00Z", ["a1"]),
    ("2025-06-02T10:30Z", ["a1"]),                # minute precision covers the minute
    ("ap2025-06-02T10:30:00Z", ["a1", "a2", "a3", "a4"]),  # 10 % of the gap to now: weeks
])
def test_date_prefixes_and_boundaries(gw, value, expected):
    assert search_ids(gw, "Appointment", {"date": value}) == expected


def test_date_prefixes_on_ranges_follow_the_spec_table(gw):
    # p3 was born "2016": its range is the whole year.
    assert search_ids(gw, "Patient", {"birthdate": "2016"}) == ["p2", "p3"]
    assert search_ids(gw, "Patient", {"birthdate": "2016-07-01"}) == ["p2"]  # a day cannot contain a year
    assert search_ids(gw, "Patient", {"birthdate": "ge2016-07-01"}) == ["p2", "p3"]  # the year reaches beyond
    assert search_ids(gw, "Patient", {"birthdate": "sa2015-12-31"}) == ["p2", "p3"]
    assert search_ids(gw, "Patient", {"birthdate": "sa2016-01-01"}) == ["p2"]  # the year starts on the day
    assert search_ids(gw, "Patient", {"birthdate": "eb2016-07-01"}) == ["p1"]
    # Flag f1's period is open-ended from 2025-06-01: it overlaps every later date
    assert search_ids(gw, "Flag", {"date": "gt2030-01-01"}) == ["f1"]
    assert search_ids(gw, "Flag", {"date": "2025-06-01"}) == []  # not contained in that day
    assert search_ids(gw, "Flag", {"date": "lt2025-06-01"}) == []
    assert get(gw, "Appointment", {"date": "gt2025-13-45"}).status_code == 400


# --- chains and _has --------------------------------------------------------------------------

def test_chain_one_and_two_levels(gw):
    nhs = f"{NHS}|9990000018"
    assert search_ids(gw, "Appointment", {"patient.identifier": nhs}) == ["a1", "a2"]
    assert search_ids(gw, "Appointment", {"patient.identifier": nhs, "status": "noshow"}) == ["a1"]
    assert search_ids(gw, "Flag", {"subject:Patient.identifier": nhs}) == ["f1"]
    assert search_ids(gw, "Flag", {"subject.identifier": f"{NHS}|9990000026"}) == ["f2"]
    assert search_ids(gw, "Appointment", {"patient.family": "bell"}) == ["a3", "a4"]
    assert search_ids(gw, "Appointment", {"patient.general-practitioner.identifier": f"{GMC}|G200"}) == ["a3", "a4"]
    assert search_ids(gw, "Appointment", {"patient.general-practitioner.family": "fenwick"}) == ["a1", "a2"]
    assert search_ids(gw, "Appointment", {"location.organization.identifier": f"{ODS}|RL4"}) == ["a1"]
    assert search_ids(gw, "Appointment", {"patient.identifier": f"{NHS}|0000000000"}) == []
    assert get(gw, "Appointment", {"patient.nonsense": "x"}).status_code == 400
    assert get(gw, "Appointment", {"status.code": "x"}).status_code == 400


def test_reverse_chain_has(gw):
    assert search_ids(gw, "Patient", {"_has:Appointment:patient:status": "noshow"}) == ["p1", "p2"]
    assert search_ids(gw, "Patient", {"_has:Appointment:patient:status": "booked"}) == ["p1"]
    assert search_ids(gw, "Patient", {"_has:Flag:patient:status": "active"}) == ["p1"]
    assert search_ids(gw, "Patient", [("_has:Appointment:patient:status", "fulfilled"),
                                      ("_has:Appointment:patient:status", "noshow")]) == ["p2"]
    assert search_ids(gw, "Practitioner", {"_has:Appointment:practitioner:date": "2025-06-03"}) == ["d1"]
    assert search_ids(gw, "Patient", {"_has:Appointment:patient:practitioner.identifier": f"{GMC}|G200"}) == ["p2"]
    assert get(gw, "Patient", {"_has:Appointment:status:status": "noshow"}).status_code == 400


# --- includes -----------------------------------------------------------------------------

def entries_by_mode(bundle: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"match": [], "include": []}
    for entry in bundle.get("entry", []):
        res = entry["resource"]
        out[entry["search"]["mode"]].append(f"{res['resourceType']}/{res['id']}")
    return {k: sorted(v) for k, v in out.items()}


def test_include_revinclude_and_iterate(gw):
    bundle = get(gw, "Appointment", {"status": "noshow", "_include": "Appointment:patient"}).json()
    assert entries_by_mode(bundle) == {"match": ["Appointment/a1", "Appointment/a3"],
                                       "include": ["Patient/p1", "Patient/p2"]}
    bundle = get(gw, "Appointment", {"_id": "a1", "_include": "Appointment:actor:Practitioner"}).json()
    assert entries_by_mode(bundle)["include"] == ["Practitioner/d1"]
    bundle = get(gw, "Appointment", {"_id": "a1", "_include": "Appointment:*"}).json()
    assert entries_by_mode(bundle)["include"] == ["Location/l1", "Patient/p1", "Practitioner/d1"]
    bundle = get(gw, "Patient", {"_id": "p1", "_revinclude": "Appointment:patient"}).json()
    assert entries_by_mode(bundle) == {"match": ["Patient/p1"], "include": ["Appointment/a1", "Appointment/a2"]}
    # without :iterate the included appointments' locations are not followed
    plain = get(gw, "Patient", [("_id", "p1"), ("_revinclude", "Appointment:patient"),
                                ("_include", "Appointment:location")]).json()
    assert "Location/l1" not in entries_by_mode(plain)["include"]
    iterated = get(gw, "Patient", [("_id", "p1"), ("_revinclude", "Appointment:patient"),
                                   ("_include:iterate", "Appointment:location"),
                                   ("_include:iterate", "Location:organization")]).json()
    assert entries_by_mode(iterated)["include"] == ["Appointment/a1", "Appointment/a2", "Location/l1",
                                                    "Organization/o1"]
    assert get(gw, "Appointment", {"_include": "Appointment:status"}).status_code == 400


# --- sorting and paging ------------------------------------------------------------------------

def ordered_ids(gw, path, params) -> list[str]:
    response = get(gw, path, params)
    assert response.status_code == 200, response.text
    return [e["resource"]["id"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"]


def test_sort_single_and_multiple_keys(gw):
    assert ordered_ids(gw, "Appointment", {"_sort": "date"}) == ["a1", "a3", "a4", "a2"]
    assert ordered_ids(gw, "Appointment", {"_sort": "-date"}) == ["a2", "a4", "a3", "a1"]
    assert ordered_ids(gw, "Appointment", {"_sort": "status,-date"}) == ["a2", "a4", "a3", "a1"]
    assert ordered_ids(gw, "Appointment", {"_sort": "-status,date"}) == ["a1", "a3", "a4", "a2"]
    assert ordered_ids(gw, "Patient", {"_sort": "family"}) == ["p1", "p2", "p3"]
    assert ordered_ids(gw, "Patient", {"_sort": "-_id"}) == ["p3", "p2", "p1"]
    # missing values sort last, both ways
    assert ordered_ids(gw, "Patient", {"_sort": "gender"}) == ["p1", "p2", "p3"]
    assert ordered_ids(gw, "Patient", {"_sort": "-gender"}) == ["p2", "p1", "p3"]
    assert get(gw, "Patient", {"_sort": "nonsense"}).status_code == 400


def _params_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def walk_pages(gw, path: str, params, *, between=None) -> tuple[list[str], list[dict]]:
    seen, bundles = [], []
    response = get(gw, path, params)
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles.append(bundle)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return seen, bundles
        if between:
            between(len(bundles))
        response = get(gw, path, _params_of(nxt))


@pytest.mark.parametrize("sort", ["", "date", "-date,status", "-_lastUpdated"])
def test_paging_visits_every_row_once_while_rows_arrive(gw, sort):
    with unit_of_work(gw.engine) as uow:
        for n in range(23):
            uow.create("Appointment", _appointment("Patient/p3", "booked", f"2025-07-{n % 9 + 1:02d}T09:00:00Z",
                                                   practitioner=None), res_id=f"x{n:02d}")
    original = {f"x{n:02d}" for n in range(23)}
    added = iter(range(100))

    def insert(_page):  # rows that sort anywhere: before, inside and after the cursor
        with unit_of_work(gw.engine) as uow:
            for _ in range(3):
                n = next(added)
                uow.create("Appointment", _appointment("Patient/p3", "booked",
                                                       f"2025-07-{n % 9 + 1:02d}T08:00:00Z", practitioner=None),
                           res_id=f"{'w' if n % 2 else 'y'}{n:02d}")

    params = {"patient": "Patient/p3", "_count": "5"}
    if sort:
        params["_sort"] = sort
    seen, bundles = walk_pages(gw, "Appointment", params, between=insert)
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert original <= set(seen), "an original row was skipped"
    assert len(bundles) >= 5
    assert all(len(b.get("entry", [])) <= 5 for b in bundles)
    # the cursor is opaque: no offset in the links
    nxt = next(link["url"] for link in bundles[0]["link"] if link["relation"] == "next")
    assert "_cursor" in dict(_params_of(nxt)) and "offset" not in nxt.lower()


def test_previous_link_goes_back_a_page(gw):
    with unit_of_work(gw.engine) as uow:
        for n in range(12):
            uow.create("Appointment", _appointment("Patient/p3", "booked", f"2025-08-{n + 1:02d}T09:00:00Z",
                                                   practitioner=None), res_id=f"z{n:02d}")
    params = {"patient": "p3", "_count": "4", "_sort": "-date"}
    first = get(gw, "Appointment", params).json()
    assert not any(link["relation"] == "previous" for link in first["link"])
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    second = get(gw, "Appointment", _params_of(nxt)).json()
    prev = next(link["url"] for link in second["link"] if link["relation"] == "previous")
    back = get(gw, "Appointment", _params_of(prev)).json()
    assert [e["resource"]["id"] for e in back["entry"]] == [e["resource"]["id"] for e in first["entry"]]
    assert [e["resource"]["id"] for e in first["entry"]] == ["z11", "z10", "z09", "z08"]


def test_bad_cursor_is_400(gw):
    junk = base64.urlsafe_b64encode(b"not json").decode()
    assert get(gw, "Appointment", {"_cursor": junk}).status_code == 400
    assert get(gw, "Appointment", {"_cursor": "%%%"}).status_code == 400


# --- totals and shapes ------------------------------------------------------------------------------

def test_total_variants_and_summary_count(gw):
    full = get(gw, "Appointment", {"_count": "1"}).json()
    assert full["total"] == 4 and len(full["entry"]) == 1
    assert "total" not in get(gw, "Appointment", {"_count": "1", "_total": "none"}).json()
    assert get(gw, "Appointment", {"_count": "1", "_total": "accurate"}).json()["total"] == 4
    estimate = get(gw, "Appointment", {"_count": "1", "_total": "estimate", "status": "noshow"}).json()
    assert estimate["total"] >= 2
    counted = get(gw, "Appointment", {"status": "noshow", "_summary": "count"}).json()
    assert counted["total"] == 2 and "entry" not in counted
    # later pages carry no total by default (the first page had it); _total=accurate forces it
    nxt = next(link["url"] for link in full["link"] if link["relation"] == "next")
    assert "total" not in get(gw, "Appointment", _params_of(nxt)).json()
    assert get(gw, "Appointment", _params_of(nxt) + [("_total", "accurate")]).json()["total"] == 4
    assert get(gw, "Appointment", {"_total": "maybe"}).status_code == 400


def test_summary_true_data_and_elements(gw):
    summary = get(gw, "Patient", {"_id": "p1", "_summary": "true"}).json()["entry"][0]["resource"]
    assert "generalPractitioner" not in summary and "text" not in summary
    assert summary["identifier"] and summary["name"] and summary["birthDate"] == "2015-03-10"
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    data = get(gw, "Patient", {"_id": "p1", "_summary": "data"}).json()["entry"][0]["resource"]
    assert "text" not in data and data["generalPractitioner"]
    elements = get(gw, "Patient", {"_id": "p1", "_elements": "birthDate,gender"}).json()["entry"][0]["resource"]
    assert set(elements) == {"resourceType", "id", "meta", "birthDate", "gender"}
    assert any(t["code"] == "SUBSETTED" for t in elements["meta"]["tag"])
    full = get(gw, "Patient", {"_id": "p1"}).json()["entry"][0]["resource"]
    assert "tag" not in full["meta"] and full["text"]


# --- handling, POST ---------------------------------------------------------------------------------

def test_unknown_parameter_strict_and_lenient(gw):
    strict = get(gw, "Appointment", {"nonsense": "1", "status": "noshow"})
    assert strict.status_code == 400
    assert strict.json()["resourceType"] == "OperationOutcome"
    assert "nonsense" in strict.json()["issue"][0]["diagnostics"]
    lenient = get(gw, "Appointment", {"nonsense": "1", "status": "noshow"}, headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    assert match_ids(lenient.json()) == ["a1", "a3"]
    self_link = next(link["url"] for link in lenient.json()["link"] if link["relation"] == "self")
    assert "nonsense" not in self_link and "status=noshow" in self_link


def test_post_search_merges_form_and_query(gw):
    with gw.http() as http:
        response = http.post("/fhir/Appointment/_search?status=noshow",
                             data={"patient.identifier": f"{NHS}|9990000018"})
        assert response.status_code == 200, response.text
        assert match_ids(response.json()) == ["a1"]
        self_link = next(link["url"] for link in response.json()["link"] if link["relation"] == "self")
        assert "/fhir/Appointment?" in self_link and "patient.identifier" in self_link
        bad = http.post("/fhir/Appointment/_search", content=b"x", headers={"content-type": "text/plain"})
        assert bad.status_code == 415


# --- $everything ---------------------------------------------------------------------------------------

def everything_refs(gw, patient: str, params=None) -> list[str]:
    response = get(gw, f"Patient/{patient}/$everything", params)
    assert response.status_code == 200, response.text
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in response.json()["entry"])


def test_everything_is_the_childs_whole_record(gw):
    assert everything_refs(gw, "p1") == [
        "Appointment/a1", "Appointment/a2", "CarePlan/cp1", "CareTeam/ct1", "Condition/c1", "Encounter/e1",
        "Flag/f1", "Location/l1", "Organization/o1", "Patient/p1", "Practitioner/d1", "ServiceRequest/sr1",
        "Task/t1"]
    assert everything_refs(gw, "p1", {"_type": "Appointment,Practitioner"}) == [
        "Appointment/a1", "Appointment/a2", "Practitioner/d1"]
    assert everything_refs(gw, "p2") == ["Appointment/a3", "Appointment/a4", "Flag/f2", "Patient/p2",
                                         "Practitioner/d2"]
    assert get(gw, "Patient/nobody/$everything").status_code == 404
    with unit_of_work(gw.engine) as uow:
        uow.delete("Patient", "p2")
    assert get(gw, "Patient/p2/$everything").status_code == 410
    assert get(gw, "Patient/p1/$everything", {"_type": "Nonsense"}).status_code == 400


def test_everything_since_and_paging(gw):
    import time
    from datetime import datetime, timezone

    time.sleep(0.01)
    mark = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    time.sleep(0.01)
    with unit_of_work(gw.engine) as uow:
        uow.update("Appointment", "a2", _appointment("Patient/p1", "noshow", "2025-06-03T09:00:00Z"))
    assert everything_refs(gw, "p1", {"_since": mark}) == ["Appointment/a2"]
    seen, bundles = walk_pages(gw, "Patient/p1/$everything", {"_count": "4"})
    assert len(bundles) == 4 and len(seen) == 13 == len(set(seen))
    assert bundles[0]["total"] == 13
    with gw.http() as http:
        posted = http.post("/fhir/Patient/p1/$everything",
                           json={"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Flag"}]})
    assert posted.status_code == 200, posted.text
    assert [e["resource"]["id"] for e in posted.json()["entry"]] == ["f1"]
