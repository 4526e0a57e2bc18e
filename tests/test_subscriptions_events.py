"""The event contract (notify/events.py) and filter matching, as units."""

from __future__ import annotations

from gateway import codes
from gateway.notify.events import events_for_changes
from gateway.notify.subscriptions import SubscriptionConfig, matches
from gateway.store.unit_of_work import Change, Stored


def _stored(rtype: str, resource: dict, version: int = 1, deleted: bool = False) -> Stored:
    return Stored(rtype, "x1", version, "2025-01-01T00:00:00Z", deleted, {"resourceType": rtype, "id": "x1", **resource})


def _change(rtype: str, before: dict | None, after: dict, deleted: bool = False) -> Change:
    b = _stored(rtype, before) if before is not None else None
    return Change("update" if b else "create", b, _stored(rtype, after, 2 if b else 1, deleted))


def _flag(status: str = "active", level: int | None = None) -> dict:
    flag = {"status": status, "code": {"coding": [{"system": codes.FLAG_CODES, "code": codes.FLAG_WNB}]},
            "subject": {"reference": "Patient/p1"}}
    if level is not None:
        flag["extension"] = [{"url": codes.EXT_ESCALATION_LEVEL, "valueInteger": level}]
    return flag


def _events(change: Change) -> list[tuple[str, str]]:
    return [(r.topic, r.payload["action"]) for r in events_for_changes([change])]


def test_wnb_flag_raised_escalated_resolved_and_drift() -> None:
    assert _events(_change("Flag", None, _flag())) == [(codes.TOPIC_WNB_FLAG, "raised")]
    assert _events(_change("Flag", _flag(level=1), _flag(level=2))) == [
        (codes.TOPIC_WNB_FLAG, "escalated"), (codes.TOPIC_DRIFT_ESCALATION, "escalated")]
    assert _events(_change("Flag", _flag(), _flag("inactive"))) == [(codes.TOPIC_WNB_FLAG, "resolved")]
    assert _events(_change("Flag", _flag(), _flag())) == []  # nothing that matters changed
    other = {"status": "active", "code": {"coding": [{"system": codes.FLAG_CODES, "code": "complex-medical-needs"}]}}
    assert _events(_change("Flag", other, {**other, "status": "inactive"})) == []
    row = events_for_changes([_change("Flag", None, _flag())])[0]
    assert row.patient_id == "p1" and row.payload["filters"]["patient"] == ["Patient/p1"]
    assert row.payload["filters"]["code"] == [f"{codes.FLAG_CODES}|{codes.FLAG_WNB}"]


def test_care_plan_referral_concern_and_noshow() -> None:
    plan = {"status": "active", "intent": "plan", "subject": {"reference": "Patient/p1"}}
    assert _events(_change("CarePlan", None, plan)) == [(codes.TOPIC_CARE_PLAN_CHANGED, "created")]
    assert _events(_change("CarePlan", plan, {**plan, "title": "v2"})) == [(codes.TOPIC_CARE_PLAN_CHANGED, "updated")]
    task = {"status": "requested", "for": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": codes.TASK_CODES, "code": codes.TASK_REFERRAL_CONCERN}]}}
    assert _events(_change("Task", None, task)) == [(codes.TOPIC_REFERRAL_CONCERN, "opened")]
    assert _events(_change("Task", task, {**task, "status": "in-progress"})) == []
    assert _events(_change("Task", task, {**task, "status": "completed"})) == [(codes.TOPIC_REFERRAL_CONCERN, "closed")]
    appt = {"status": "booked", "participant": [{"actor": {"reference": "Patient/p1"}}]}
    assert _events(_change("Appointment", appt, {**appt, "status": "noshow"})) == [
        (codes.TOPIC_APPOINTMENT_NOSHOW, "noshow")]
    assert _events(_change("Appointment", {**appt, "status": "noshow"}, {**appt, "status": "noshow"})) == []


def test_matching_filters_and_binding() -> None:
    event = {"patient": ["Patient/p1"], "code": [f"{codes.FLAG_CODES}|{codes.FLAG_WNB}"], "action": ["raised"],
             "organization": ["Organization/gp", f"{codes.ODS_CODE}|M85001", "HealthcareService/s1"]}
    config = SubscriptionConfig(topic=codes.TOPIC_WNB_FLAG, endpoint="http://x")
    assert matches(config, codes.TOPIC_WNB_FLAG, event)
    assert not matches(config, codes.TOPIC_CARE_PLAN_CHANGED, event)
    for filters, expected in (
        ({"patient": ["Patient/p1"]}, True), ({"patient": ["p1"]}, True), ({"patient": ["Patient/p2"]}, False),
        ({"patient": ["http://other/fhir/Patient/p1"]}, True),
        ({"code": [codes.FLAG_WNB]}, True), ({"code": [f"{codes.FLAG_CODES}|other"]}, False),
        ({"action": ["resolved", "raised"]}, True), ({"action": ["resolved"]}, False),
        ({"organization": ["M85001"]}, True), ({"organization": ["Organization/elsewhere"]}, False),
    ):
        config.filters = [filters]
        assert matches(config, codes.TOPIC_WNB_FLAG, event) is expected, filters
    config.filters = []
    config.binding = [f"{codes.ODS_CODE}|M85001"]
    assert matches(config, codes.TOPIC_WNB_FLAG, event)
    config.binding = ["Organization/unrelated"]
    assert not matches(config, codes.TOPIC_WNB_FLAG, event)
    assert not matches(config, codes.TOPIC_WNB_FLAG, {**event, "organization": []})
