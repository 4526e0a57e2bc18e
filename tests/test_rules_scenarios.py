"""Safeguarding rules end to end: timelines in over MLLP, FHIR out over HTTP, on SQLite
and PostgreSQL.  The case review's story, a child on a child-protection plan, and
control children who must get nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.task import Task

from gateway import codes
from rules_helpers import (CARD, DIET, NOW, PHYS, SALT, Timeline, detail_refs, ext, flags, level, marker, priority,
                           search, send, tasks)


def test_case_review_story_three_services_three_years(gateway):
    """Two medical conditions (complex needs), missed appointments at three services over three years."""
    story = Timeline(gateway, 101).registered()
    story.send()
    with gateway.http() as http:
        pid = story.patient_id(http)
        for code, display in (("128188000", "Cerebral palsy"), ("84757009", "Epilepsy")):
            assert http.post("/fhir/Condition", json={
                "resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": "active"}]},
                "code": {"coding": [{"system": codes.SNOMED, "code": code, "display": display}]}}).status_code == 201
        marker(http, pid, codes.FLAG_COMPLEX_NEEDS)
    start = datetime(2022, 3, 7, 10, 0)
    plan = [(0, DIET), (150, SALT), (300, CARD), (420, DIET), (610, SALT), (800, DIET), (1010, CARD)]
    for n, (day, service) in enumerate(plan, 1):
        story.missed(n, start + timedelta(days=day), service)
        story.booked(100 + n, start + timedelta(days=day + 7), service)  # each re-booked, then attended
    feed = list(story.messages)
    story.send()
    with gateway.http() as http:
        active = flags(http, pid, codes.FLAG_WNB, "active")
        assert len(active) == 1, "one open Flag per child per rule, updated, never duplicated"
        flag = active[0]
        Flag.model_validate(flag)
        assert flag["author"]["reference"] == codes.GATEWAY_DEVICE_REF
        assert http.get(f"/fhir/{codes.GATEWAY_DEVICE_REF}").status_code == 200
        assert flag["category"][0]["coding"][0] == {"system": codes.FLAG_CATEGORY, "code": "safety", "display": "Safety"}
        assert ext(flag, codes.EXT_RULE)[0]["valueString"] == "R1-was-not-brought|1"
        assert flag["period"]["start"]
        assert len(detail_refs(flag)) == 7 and all(r.startswith("Appointment/") for r in detail_refs(flag))
        text = flag["text"]["div"]
        assert "7 appointments not brought to in 33 months across dietetics, paediatric cardiology and speech and " \
               "language therapy; child has complex medical needs" in text, text
        # R2: the GP practice (no care team) reviews; R5: each later WNB has an enquiry Task
        reviews = tasks(http, pid, codes.TASK_REVIEW_MISSED)
        assert len(reviews) == 1
        Task.model_validate(reviews[0])
        gp = http.get(f"/fhir/Patient/{pid}").json()["generalPractitioner"][0]["reference"]
        assert reviews[0]["owner"]["reference"] == gp and reviews[0]["focus"]["reference"] == f"Flag/{flag['id']}"
        enquiries = tasks(http, pid, codes.TASK_WNB_ENQUIRY)
        assert len(enquiries) == 6  # the first WNB raised the Flag (marked child: one is enough)
        assert {t["focus"]["reference"] for t in enquiries} == set(detail_refs(flag)[1:])
        # R3: the GP's view of the whole pattern
        missed = http.get(f"/fhir/Patient/{pid}/$missed-appointments", params={"as-of": "2025-01-31"}).json()
        params = missed["parameter"]
        total = next(p["valueInteger"] for p in params if p["name"] == "total-missed")
        assert total == 7
        listed = [p for p in params if p["name"] == "appointment"]
        dates = [next(x["valueDateTime"] for x in p["part"] if x["name"] == "date") for p in listed]
        assert dates == sorted(dates, reverse=True)
        services = {next(x["valueString"] for x in p["part"] if x["name"] == "name"):
                    next(x["valueInteger"] for x in p["part"] if x["name"] == "missed")
                    for p in params if p["name"] == "service"}
        assert services == {"dietetics": 1, "paediatric cardiology": 1}  # 12 months before as-of
        versions = flag["meta"]["versionId"]
    # Replaying the whole feed (duplicates: original ACKs) changes nothing.
    send(gateway, *feed)
    with gateway.http() as http:
        assert flags(http, pid, codes.FLAG_WNB)[0]["meta"]["versionId"] == versions


def test_child_protection_plan_one_wnb_raises(gateway):
    child = Timeline(gateway, 102).registered()
    child.send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        marker(http, pid, codes.FLAG_CHILD_PROTECTION_PLAN)
    child.missed(1, NOW - timedelta(days=3), DIET).send()
    with gateway.http() as http:
        active = flags(http, pid, codes.FLAG_WNB, "active")
        assert len(active) == 1
        assert "1 appointment not brought to (dietetics," in active[0]["text"]["div"]
        assert "child is on a child protection plan" in active[0]["text"]["div"]
        assert priority(active[0]) == "PM" and level(active[0]) == 0
        assert len(tasks(http, pid, codes.TASK_REVIEW_MISSED)) == 1
        assert tasks(http, pid, codes.TASK_WNB_ENQUIRY) == []


def test_any_child_two_wnbs_within_twelve_months(gateway):
    child = Timeline(gateway, 103)
    child.missed(1, NOW - timedelta(days=400), DIET).missed(2, NOW - timedelta(days=10), SALT).send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        assert flags(http, pid, codes.FLAG_WNB) == [], "13 months apart: no pattern"
    child.missed(3, NOW - timedelta(days=5), PHYS).send()
    with gateway.http() as http:
        active = flags(http, pid, codes.FLAG_WNB, "active")
        assert len(active) == 1
        assert len(detail_refs(active[0])) == 2
        assert "2 appointments not brought to in 5 days across physiotherapy and speech and language therapy." \
            in active[0]["text"]["div"]
        review = tasks(http, pid, codes.TASK_REVIEW_MISSED)
        assert len(review) == 1 and "owner" not in review[0]  # no GP known: the Task says so
        assert "No registered GP practice" in review[0]["note"][0]["text"]


def test_per_service_override_one_cardiology_wnb(gateway):
    child = Timeline(gateway, 104).missed(1, NOW - timedelta(days=2), CARD)
    child.send()
    with gateway.http() as http:
        assert len(flags(http, child.patient_id(http), codes.FLAG_WNB, "active")) == 1


def test_controls_get_nothing(gateway):
    attends = Timeline(gateway, 105)
    for n in range(4):
        when = NOW - timedelta(days=30 * n + 1)
        attends.booked(n, when, DIET).event(n, "S14", when, DIET)
        attends.messages[-1] = attends.messages[-1].replace("|Booked\r", "|Complete\r", 1)  # SCH-25: attended
    provider = Timeline(gateway, 106)
    for n in range(4):
        provider.event(n, "S15", NOW - timedelta(days=10 * n + 1), SALT, cancel="HOSP^Hospital cancelled^HL70276")
    adult = Timeline(gateway, 107, birth_date="19800101")
    for n, service in enumerate((DIET, SALT, CARD)):
        adult.missed(n, NOW - timedelta(days=5 * n + 1), service)
    one = Timeline(gateway, 108).missed(1, NOW - timedelta(days=3), DIET)
    for timeline in (attends, provider, adult, one):
        timeline.send()
    with gateway.http() as http:
        for timeline in (attends, provider, adult, one):
            pid = timeline.patient_id(http)
            assert search(http, "Flag", patient=f"Patient/{pid}") == [], timeline.child
            assert search(http, "Task", patient=f"Patient/{pid}") == [], timeline.child
        statuses = {a["status"] for a in search(http, "Appointment", patient=f"Patient/{attends.patient_id(http)}")}
        assert statuses == {"fulfilled"}
        # the adult's no-shows are still listed (not counted) by $missed-appointments
        listed = http.get(f"/fhir/Patient/{adult.patient_id(http)}/$missed-appointments").json()
        kids = [x["valueBoolean"] for p in listed["parameter"] if p["name"] == "appointment"
                for x in p["part"] if x["name"] == "child-at-date"]
        assert kids == [False, False, False]


def test_disguised_non_engagement(gateway):
    child = Timeline(gateway, 109)
    for n in range(2):
        child.event(n, "S15", NOW - timedelta(days=40 * n + 1), SALT)
    child.send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        assert flags(http, pid, codes.FLAG_DISGUISED_NON_ENGAGEMENT) == []
    child.event(5, "S15", NOW - timedelta(days=100), DIET).send()
    with gateway.http() as http:
        active = flags(http, pid, codes.FLAG_DISGUISED_NON_ENGAGEMENT, "active")
        assert len(active) == 1 and priority(active[0]) == "PL"
        assert "3 appointments cancelled by the parent or carer" in active[0]["text"]["div"]
        assert flags(http, pid, codes.FLAG_WNB) == []


def test_enquiry_records_carer_reason_and_needs_an_outcome(gateway):
    child = Timeline(gateway, 110).registered()
    child.missed(1, NOW - timedelta(days=20), DIET).missed(2, NOW - timedelta(days=10), SALT).send()
    child.missed(3, NOW - timedelta(days=2), PHYS, note="Mum said the car broke down").send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        enquiries = tasks(http, pid, codes.TASK_WNB_ENQUIRY)
        assert len(enquiries) == 1
        task = enquiries[0]
        assert task["status"] == "requested"
        reasons = [i["valueString"] for i in task["input"]
                   if i["type"]["coding"][0]["code"] == codes.TASK_INPUT_CARER_REASON]
        assert reasons == ["Mum said the car broke down"]
        # the carer's reason is not an outcome
        body = {k: v for k, v in task.items() if k != "meta"}
        body["status"] = "completed"
        refused = http.put(f"/fhir/Task/{task['id']}", json=body)
        assert refused.status_code == 422
        assert refused.json()["issue"][0]["expression"] == ["Task.output"]
        body["output"] = [{"type": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_INPUT_CARER_REASON}]},
                           "valueString": "car broke down"}]
        assert http.put(f"/fhir/Task/{task['id']}", json=body).status_code == 422
        body["output"] = [{"type": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_OUTPUT_OUTCOME}]},
                           "valueString": "Spoke to health visitor: family needs transport support; referred."}]
        done = http.put(f"/fhir/Task/{task['id']}", json=body)
        assert done.status_code == 200, done.text
        assert len(tasks(http, pid, codes.TASK_WNB_ENQUIRY)) == 1  # completing it raised nothing new


def test_discharge_after_wnb_needs_a_review(gateway):
    child = Timeline(gateway, 111).registered()
    child.missed(1, NOW - timedelta(days=4), DIET, reason="DISCH^Discharged - did not attend^L").send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        active = flags(http, pid, codes.FLAG_DISCHARGED_AFTER_WNB, "active")
        assert len(active) == 1 and priority(active[0]) == "PH"
        assert "Dietetics discharged the child on" in active[0]["text"]["div"]
        reviews = tasks(http, pid, codes.TASK_DISCHARGE_REVIEW)
        owners = sorted(t["owner"]["reference"].split("/")[0] for t in reviews)
        assert owners == ["HealthcareService", "Organization"]  # the discharging service and the GP practice
        gp_task = next(t for t in reviews if t["owner"]["reference"].startswith("Organization/"))
        body = {k: v for k, v in gp_task.items() if k != "meta"}
        body["status"] = "completed"
        assert http.put(f"/fhir/Task/{gp_task['id']}", json=body).status_code == 422
        assert flags(http, pid, codes.FLAG_DISCHARGED_AFTER_WNB, "active")
        body["output"] = [{"type": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_OUTPUT_OUTCOME}]},
                           "valueString": "Re-referred to dietetics; family offered a home visit."}]
        assert http.put(f"/fhir/Task/{gp_task['id']}", json=body).status_code == 200
        resolved = flags(http, pid, codes.FLAG_DISCHARGED_AFTER_WNB)
        assert [f["status"] for f in resolved] == ["inactive"] and resolved[0]["period"]["end"]


def test_referral_closed_for_non_attendance_and_episode_finished(gateway):
    child = Timeline(gateway, 112).registered()
    child.missed(1, NOW - timedelta(days=30), SALT).send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        org = http.post("/fhir/Organization", json={"resourceType": "Organization", "name": "Community SALT team",
                                                    "telecom": [{"system": "phone", "value": "01632 960111"}]}).json()
        request = http.post("/fhir/ServiceRequest", json={
            "resourceType": "ServiceRequest", "status": "revoked", "intent": "order",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"text": "Speech and language therapy"},
            "reasonCode": [{"text": "Speech delay"}],
            "performer": [{"reference": f"Organization/{org['id']}", "display": "Community SALT team"}],
            "extension": [{"url": codes.EXT_CLOSURE_REASON, "valueCodeableConcept": {
                "coding": [{"system": codes.CLOSURE_REASONS, "code": "non-attendance"}]}}]})
        assert request.status_code == 201, request.text
        active = flags(http, pid, codes.FLAG_DISCHARGED_AFTER_WNB, "active")
        assert len(active) == 1
        assert f"ServiceRequest/{request.json()['id']}" in detail_refs(active[0])
        owners = {t["owner"]["reference"] for t in tasks(http, pid, codes.TASK_DISCHARGE_REVIEW)}
        assert f"Organization/{org['id']}" in owners
        episode = http.post("/fhir/EpisodeOfCare", json={
            "resourceType": "EpisodeOfCare", "status": "finished", "patient": {"reference": f"Patient/{pid}"},
            "managingOrganization": {"reference": f"Organization/{org['id']}", "display": "Community SALT team"},
            "period": {"start": (NOW - timedelta(days=200)).date().isoformat(), "end": NOW.date().isoformat()}})
        assert episode.status_code == 201, episode.text
        active = flags(http, pid, codes.FLAG_DISCHARGED_AFTER_WNB, "active")
        assert len(active) == 1 and f"EpisodeOfCare/{episode.json()['id']}" in detail_refs(active[0])


def test_coordination_task_for_many_bookings(gateway):
    child = Timeline(gateway, 113).registered()
    for n, (days, service) in enumerate([(3, DIET), (9, SALT), (15, DIET)]):
        child.booked(n, NOW + timedelta(days=days), service)
    child.send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        assert tasks(http, pid, codes.TASK_COORDINATE) == []
    child.booked(7, NOW + timedelta(days=20), PHYS).send()
    with gateway.http() as http:
        found = tasks(http, pid, codes.TASK_COORDINATE)
        assert len(found) == 1 and len(found[0]["input"]) == 4
        assert "4 appointments booked within 30 days across 3 services" in found[0]["description"]
    child.booked(8, NOW + timedelta(days=25), SALT).send()
    with gateway.http() as http:
        found = tasks(http, pid, codes.TASK_COORDINATE)
        assert len(found) == 1 and len(found[0]["input"]) == 5


def test_complex_needs_without_care_plan(gateway):
    child = Timeline(gateway, 114).registered()
    child.send()
    with gateway.http() as http:
        pid = child.patient_id(http)
        marker(http, pid, codes.FLAG_COMPLEX_NEEDS)
    child.booked(1, NOW + timedelta(days=10), DIET).booked(2, NOW + timedelta(days=50), SALT)
    child.booked(3, NOW - timedelta(days=100), PHYS).send()
    with gateway.http() as http:
        active = flags(http, pid, codes.FLAG_NO_CARE_PLAN, "active")
        assert len(active) == 1
        assert "3 services involved in the last 12 months" in active[0]["text"]["div"]
        patient = http.get(f"/fhir/Patient/{pid}").json()
        gp_ref = patient["generalPractitioner"][0]["reference"]
        todo = tasks(http, pid, codes.TASK_CREATE_CARE_PLAN)
        assert len(todo) == 1 and todo[0]["owner"]["reference"] == gp_ref
        # a valid integrated care plan (lead professional + the GP practice, each reachable)
        gp = http.get(f"/fhir/{gp_ref}").json()
        gp["telecom"] = [{"system": "phone", "value": "01632 960222"}]
        assert http.put(f"/fhir/{gp_ref}", json={k: v for k, v in gp.items() if k != "meta"}).status_code == 200
        lead = http.post("/fhir/Practitioner", json={"resourceType": "Practitioner", "name": [{"family": "Okafor"}],
                                                     "telecom": [{"system": "phone", "value": "01632 960333"}]}).json()
        team = http.post("/fhir/CareTeam", json={
            "resourceType": "CareTeam", "status": "active", "subject": {"reference": f"Patient/{pid}"},
            "participant": [
                {"role": [{"coding": [{"system": codes.CARE_TEAM_ROLES, "code": codes.ROLE_LEAD_PROFESSIONAL}]}],
                 "member": {"reference": f"Practitioner/{lead['id']}"}},
                {"role": [{"coding": [{"system": codes.CARE_TEAM_ROLES, "code": codes.ROLE_REGISTERED_GP}]}],
                 "member": {"reference": gp_ref}}]})
        assert team.status_code == 201, team.text
        plan = http.post("/fhir/CarePlan", json={
            "resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": f"Patient/{pid}"}, "careTeam": [{"reference": f"CareTeam/{team.json()['id']}"}],
            "extension": [{"url": codes.EXT_INFORMATION_EXCHANGE,
                           "valueMarkdown": "The lead emails every party after each review."}]})
        assert plan.status_code == 201, plan.text
        assert flags(http, pid, codes.FLAG_NO_CARE_PLAN, "active") == []
        assert [f["status"] for f in flags(http, pid, codes.FLAG_NO_CARE_PLAN)] == ["inactive"]
        done = tasks(http, pid, codes.TASK_CREATE_CARE_PLAN)[0]
        assert done["status"] == "completed"
        assert done["output"][0]["valueReference"]["reference"] == f"CarePlan/{plan.json()['id']}"
        # with a care team, a new WNB flag's review goes to the lead, the GP gets a copy
    child.missed(9, NOW - timedelta(days=1), DIET).send()
    with gateway.http() as http:
        reviews = tasks(http, pid, codes.TASK_REVIEW_MISSED)
        owners = {t["owner"]["reference"]: t for t in reviews}
        lead_ref = "Practitioner/" + lead["id"]
        assert set(owners) == {lead_ref, gp_ref}
        assert owners[gp_ref]["partOf"][0]["reference"] == "Task/" + owners[lead_ref]["id"]
