"""Integrated care plans through the FHIR HTTP API: the lead explicit, the GP practice
always a party, every party reachable, commissioned services' duties stated, the plan
in writing (narrative + printable $document), each version an event; SQLite and
PostgreSQL."""

from __future__ import annotations

import copy

from gateway import codes
from gateway.hl7v2.ack import ack_code_of
from gateway.ingest.mllp_client import MllpClient
from gateway.store.reading import read_only
from gateway.synthetic import adt_message, make_child

JSON = {"content-type": "application/fhir+json"}


def role(code: str, display: str) -> list[dict]:
    return [{"coding": [{"system": codes.CARE_TEAM_ROLES, "code": code, "display": display}]}]


def post(http, resource: dict):
    return http.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON)


def put(http, resource: dict):
    return http.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource, headers=JSON)


def created(http, resource: dict) -> dict:
    reply = post(http, resource)
    assert reply.status_code == 201, reply.text
    return reply.json()


def family(gw, index: int) -> dict:
    """A child (ADT A04 over MLLP, PD1 = the GP practice) and the professionals around them."""
    child = make_child(index)
    with MllpClient("127.0.0.1", gw.mllp_port, timeout=30) as client:
        assert ack_code_of(client.send(adt_message(child, "A04", control_id=f"A{index}"))) == "AA"
    with gw.http() as http:
        patient = http.get("/fhir/Patient", params={"identifier": f"{codes.NHS_NUMBER}|{child.nhs_number}"}
                           ).json()["entry"][0]["resource"]
        gp = http.get(f"/fhir/{patient['generalPractitioner'][0]['reference']}").json()
        # The ADT feed knows the practice only by ODS code; the GP practice's phone comes from elsewhere.
        gp["telecom"] = [{"system": "phone", "value": "01632960500", "use": "work"}]
        assert put(http, gp).status_code == 200
        lead = created(http, {"resourceType": "Practitioner", "name": [{"family": "Hartley", "given": ["Sam"]}],
                              "telecom": [{"system": "phone", "value": "01632960700"},
                                          {"system": "email", "value": "sam.hartley@example.nhs.uk"}]})
        endpoint = created(http, {"resourceType": "Endpoint", "status": "active",
                                  "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/"
                                                     "endpoint-connection-type", "code": "direct-project"},
                                  "payloadType": [{"text": "care plan"}],
                                  "address": "mailto:school.nursing@example.nhs.uk"})
        school = created(http, {"resourceType": "Organization", "name": "School Nursing Team",
                                "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}]})
        therapy = created(http, {"resourceType": "Organization", "name": "Brightwater Therapy Ltd",
                                 "telecom": [{"system": "phone", "value": "01632960800"}]})
        mute = created(http, {"resourceType": "Organization", "name": "Unreachable Service"})
    return {"patient": patient, "gp": gp, "lead": lead, "school": school, "therapy": therapy, "mute": mute}


def care_team(f: dict, *, lead: bool = True, extra: list[dict] | None = None) -> dict:
    participants = [
        {"role": role("lead-professional", "Lead professional") if lead else [{"text": "Paediatrician"}],
         "member": {"reference": f"Practitioner/{f['lead']['id']}"}},
        {"role": [{"text": "School nursing"}], "member": {"reference": f"Organization/{f['school']['id']}"}},
        {"role": role("commissioned-service", "Commissioned service"),
         "member": {"reference": f"Organization/{f['therapy']['id']}"}},
    ] + (extra or [])
    return {"resourceType": "CareTeam", "status": "active", "name": "Team around the child",
            "subject": {"reference": f"Patient/{f['patient']['id']}"}, "participant": participants}


def care_plan(f: dict, team_id: str) -> dict:
    therapy = f"Organization/{f['therapy']['id']}"
    return {
        "resourceType": "CarePlan", "status": "active", "intent": "plan", "title": "Integrated care plan",
        "subject": {"reference": f"Patient/{f['patient']['id']}"},
        "careTeam": [{"reference": f"CareTeam/{team_id}"}],
        "contained": [{"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
                       "description": {"text": "Attends every speech therapy session this term"},
                       "subject": {"reference": f"Patient/{f['patient']['id']}"}}],
        "goal": [{"reference": "#g1"}],
        "extension": [
            {"url": codes.EXT_INFORMATION_EXCHANGE,
             "valueMarkdown": "The lead emails every party within 2 working days of any change; "
                              "missed sessions are phoned to the lead the same day."},
            {"url": codes.EXT_REVIEW_DATE, "valueDate": "2025-09-30"},
        ],
        "activity": [
            {"detail": {"status": "scheduled", "description": "Weekly speech and language therapy",
                        "performer": [{"reference": therapy}]},
             "extension": [{"url": codes.EXT_COMMISSIONED_DUTIES, "extension": [
                 {"url": "liaison", "valueString": "Tells the lead of any missed session the same day"},
                 {"url": "communication", "valueString": "Sends a progress report to all parties each month"}]}]},
            {"detail": {"status": "in-progress", "description": "Monitor growth at school",
                        "performer": [{"reference": f"Organization/{f['school']['id']}"}]}},
        ],
    }


def test_complete_plan_is_in_writing_versioned_and_announced(gateway):
    f = family(gateway, 41)
    with gateway.http() as http:
        team = created(http, care_team(f))
        gp_key = f"Organization/{f['gp']['id']}"
        [gp_part] = [p for p in team["participant"] if p["member"]["reference"] == gp_key]
        assert gp_part["role"][0]["coding"][0]["code"] == codes.ROLE_REGISTERED_GP  # added automatically
        plan = created(http, care_plan(f, team["id"]))
        div = plan["text"]["div"]
        assert plan["text"]["status"] == "generated"
        assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
        assert "<b>Sam Hartley</b>" in div and "leads this plan" in div
        for party in ("Sam Hartley", "School Nursing Team", "Brightwater Therapy Ltd", f['gp']['name']):
            assert party in div, party
        for contact in ("01632960700", "mailto:school.nursing@example.nhs.uk", "01632960800", "01632960500"):
            assert contact in div, contact
        assert "Attends every speech therapy session this term" in div
        assert "Weekly speech and language therapy" in div and "Tells the lead of any missed session" in div
        assert "2025-09-30" in div and "within 2 working days" in div

        # Every change is a new version, and each version is an event for the parties.
        changed = copy.deepcopy(plan)
        changed["activity"][1]["detail"]["status"] = "completed"
        reply = put(http, changed)
        assert reply.status_code == 200, reply.text
        assert reply.json()["meta"]["versionId"] == "2"
        assert http.get(f"/fhir/CarePlan/{plan['id']}/_history/1").json()["meta"]["versionId"] == "1"

        page = http.get(f"/fhir/CarePlan/{plan['id']}/$document")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.text.startswith("<!DOCTYPE html>") and "@page" in page.text
        assert "version 2" in page.text and "Sam Hartley" in page.text and "Brightwater Therapy Ltd" in page.text
        missing = http.get("/fhir/CarePlan/no-such-plan/$document")
        assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"

        # A CareTeam change is a plan change: the narrative follows and a new plan version is written.
        team["participant"][1]["member"] = {"reference": f"Organization/{f['therapy']['id']}"}
        team["participant"][1]["role"] = [{"text": "Therapy lead contact"}]
        assert put(http, team).status_code == 200
        latest = http.get(f"/fhir/CarePlan/{plan['id']}").json()
        assert latest["meta"]["versionId"] == "3"
        assert "School Nursing Team" not in latest["text"]["div"].split("Parties and how to reach them")[1]
    with read_only(gateway.engine) as uow:
        rows = uow.fetchall("SELECT focus_version FROM outbox_events WHERE topic=? AND focus_id=? "
                            "ORDER BY focus_version", (codes.TOPIC_CARE_PLAN_CHANGED, plan["id"]))
    assert [r[0] for r in rows] == [1, 2, 3]


def test_invalid_plans_and_teams_get_422_naming_the_element(gateway):
    f = family(gateway, 42)
    patient_ref = f"Patient/{f['patient']['id']}"
    with gateway.http() as http:
        def refused(resource: dict, expression: str, words: str) -> None:
            reply = post(http, resource)
            assert reply.status_code == 422, reply.text
            issue = reply.json()["issue"][0]
            assert issue["expression"] == [expression], issue
            assert words in issue["diagnostics"], issue

        refused(care_team(f, lead=False), "CareTeam.participant", "no lead professional")
        refused(care_team(f, extra=[{"member": {"reference": f"Organization/{f['mute']['id']}"}}]),
                "CareTeam.participant[3].member", "Unreachable Service, has no way to be reached")
        refused({**care_team(f), "subject": {"reference": "Patient/not-there"}}, "CareTeam.subject",
                "does not exist")
        two_leads = care_team(f)
        two_leads["participant"][1]["role"] = role("lead-professional", "Lead professional")
        refused(two_leads, "CareTeam.participant[1].role", "exactly one leads")

        team = created(http, care_team(f))
        plan = care_plan(f, team["id"])
        refused({**plan, "careTeam": []}, "CarePlan.careTeam", "names no CareTeam")
        refused({**plan, "subject": {"reference": "Patient/not-there"}}, "CarePlan.subject", "does not exist")
        refused({**plan, "extension": plan["extension"][1:]},
                f"CarePlan.extension('{codes.EXT_INFORMATION_EXCHANGE}')", "how information is exchanged")
        no_duties = copy.deepcopy(plan)
        del no_duties["activity"][0]["extension"]
        refused(no_duties, f"CarePlan.activity[0].extension('{codes.EXT_COMMISSIONED_DUTIES}')",
                "liaison and communication duties")
        half = copy.deepcopy(plan)
        half["activity"][0]["extension"][0]["extension"] = half["activity"][0]["extension"][0]["extension"][:1]
        refused(half, f"CarePlan.activity[0].extension('{codes.EXT_COMMISSIONED_DUTIES}')", "communication duties")
        # Nothing half-stored: only the one valid CareTeam exists, and no plan.
        assert len(http.get("/fhir/CareTeam", params={"patient": patient_ref}).json().get("entry", [])) == 1
        assert http.get("/fhir/CarePlan", params={"patient": patient_ref}).json().get("entry", []) == []
