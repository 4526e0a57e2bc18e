"""Subscription resources over the FHIR API: validation (422 naming the element),
status handling, $status / $events, topics and the CapabilityStatement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.subscriptiontopic import SubscriptionTopic

from conftest import RunningGateway, gateway_settings
from gateway import codes
from gateway.notify.subscriptions import EXT_CONTENT, EXT_FILTER, EXT_MAX_COUNT
from gateway.notify.topics import CAPABILITY_TOPIC_EXT
from subscription_helpers import FAST, create_active, no_shows, subscription
from subscription_receiver import Receiver

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


@pytest.fixture
def fast_gateway(database_url: str) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(database_url, **FAST)).start()
    yield running
    running.stop()


def _bad(**changes):  # noqa: ANN003, ANN202
    sub = subscription("http://127.0.0.1:9/notify")
    for path, value in changes.items():
        target = sub
        keys = path.split("__")
        for key in keys[:-1]:
            target = target.setdefault(key, {})
        if value is None:
            target.pop(keys[-1], None)
        else:
            target[keys[-1]] = value
    return sub


INVALID = [
    ("unknown topic", _bad(criteria=f"{codes.TOPIC_BASE}/no-such-topic"), "Subscription.criteria"),
    ("not a topic", _bad(criteria="Appointment?status=noshow"), "Subscription.criteria"),
    ("bad filter name", _bad(_criteria={"extension": [{"url": EXT_FILTER, "valueString": "Appointment?colour=red"}]}),
     f"Subscription.criteria.extension('{EXT_FILTER}')[0]"),
    ("filter on another type", _bad(_criteria={"extension": [{"url": EXT_FILTER, "valueString": "Flag?patient=Patient/1"}]}),
     f"Subscription.criteria.extension('{EXT_FILTER}')[0]"),
    ("filter modifier", _bad(_criteria={"extension": [{"url": EXT_FILTER, "valueString": "patient:missing=true"}]}),
     f"Subscription.criteria.extension('{EXT_FILTER}')[0]"),
    ("ftp endpoint", _bad(channel__endpoint="ftp://example.org/x"), "Subscription.channel.endpoint"),
    ("relative endpoint", _bad(channel__endpoint="/notify"), "Subscription.channel.endpoint"),
    ("missing payload", _bad(channel__payload=None), "Subscription.channel.payload"),
    ("xml payload", _bad(channel__payload="application/fhir+xml"), "Subscription.channel.payload"),
    ("bad payload content", _bad(channel___payload={"extension": [{"url": EXT_CONTENT, "valueCode": "everything"}]}),
     f"Subscription.channel.payload.extension('{EXT_CONTENT}')"),
    ("websocket", _bad(channel__type="websocket"), "Subscription.channel.type"),
    ("bad header", _bad(channel__header=["no colon here"]), "Subscription.channel.header[0]"),
    ("zero max-count", _bad(channel__extension=[{"url": EXT_MAX_COUNT, "valuePositiveInt": 0}]), None),
    ("short secret", _bad(extension=[{"url": codes.EXT_SUBSCRIPTION_SECRET, "valueString": "short"}]),
     f"Subscription.extension('{codes.EXT_SUBSCRIPTION_SECRET}')"),
    ("bound to a patient", _bad(extension=[{"url": codes.EXT_SUBSCRIBER_ORGANIZATION,
                                            "valueReference": {"reference": "Patient/1"}}]),
     f"Subscription.extension('{codes.EXT_SUBSCRIBER_ORGANIZATION}')[0]"),
]


@pytest.mark.parametrize("why,body,expression", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_subscription_is_422_naming_the_element(sqlite_gateway: RunningGateway, why: str, body: dict,
                                                        expression: str | None) -> None:
    with sqlite_gateway.http() as client:
        response = client.post("/fhir/Subscription", json=body)
        assert response.status_code in (400, 422), (why, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        issue = outcome["issue"][0]
        if expression:
            assert response.status_code == 422
            assert issue["expression"] == [expression], issue
        assert client.get("/fhir/Subscription").json().get("total", 0) == 0  # nothing stored


def test_status_owned_by_server_and_off_stops(fast_gateway: RunningGateway) -> None:
    receiver = Receiver()
    try:
        with fast_gateway.http() as client:
            body = subscription(receiver.url)
            body["status"] = "active"  # a client cannot skip the handshake
            created = client.post("/fhir/Subscription", json=body).json()
            assert created["status"] == "requested"
            sub_id = created["id"]
            from subscription_helpers import wait_status
            active = wait_status(client, sub_id, "active")
            # An edit that keeps the endpoint keeps it active; switching off stops deliveries.
            active["reason"] = "still testing"
            assert client.put(f"/fhir/Subscription/{sub_id}", json=active).json()["status"] == "active"
            active["status"] = "off"
            assert client.put(f"/fhir/Subscription/{sub_id}", json=active).json()["status"] == "off"
            no_shows(fast_gateway.mllp_port, 1)
            assert not receiver.wait_for(lambda r: r.notifications(), timeout=1.0)
            found = client.get("/fhir/Subscription", params={"status": "off"}).json()
            assert found["total"] == 1
    finally:
        receiver.close()


def test_status_and_events_replay_a_range(fast_gateway: RunningGateway) -> None:
    receiver = Receiver()
    try:
        with fast_gateway.http() as client:
            sub_id = create_active(client, subscription(receiver.url))
            no_shows(fast_gateway.mllp_port, 5)
            assert receiver.wait_for(lambda r: r.event_numbers() == [1, 2, 3, 4, 5])
            status = client.get(f"/fhir/Subscription/{sub_id}/$status").json()
            Bundle.model_validate(status)
            params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
            assert params["type"]["valueCode"] == "query-status"
            assert params["status"]["valueCode"] == "active"
            assert params["events-since-subscription-start"]["valueString"] == "5"

            replay = client.get(f"/fhir/Subscription/{sub_id}/$events",
                                params={"eventsSinceNumber": 2, "eventsUntilNumber": 4, "content": "full-resource"})
            assert replay.status_code == 200, replay.text
            bundle = replay.json()
            Bundle.model_validate(bundle)
            assert bundle["type"] == "history"
            first = bundle["entry"][0]["resource"]
            assert {"name": "type", "valueCode": "query-event"} in first["parameter"]
            numbers = [int(part["valueString"]) for p in first["parameter"] if p["name"] == "notification-event"
                       for part in p["part"] if part["name"] == "event-number"]
            assert numbers == [2, 3, 4]
            assert [e["resource"]["status"] for e in bundle["entry"][1:]] == ["noshow"] * 3
            # The replay names the same focus as the original notification.
            original = {n: f for r in receiver.notifications() for n, f in zip(r.event_numbers, r.focuses)}
            replayed = [part["valueReference"]["reference"] for p in first["parameter"]
                        if p["name"] == "notification-event" for part in p["part"] if part["name"] == "focus"]
            assert replayed == [original[2], original[3], original[4]]
            # POST with Parameters works too; bad numbers are a 400 naming the parameter.
            posted = client.post(f"/fhir/Subscription/{sub_id}/$events", json={
                "resourceType": "Parameters", "parameter": [{"name": "eventsSinceNumber", "valueString": "5"}]})
            assert posted.status_code == 200 and len(posted.json()["entry"]) == 2
            bad = client.get(f"/fhir/Subscription/{sub_id}/$events", params={"eventsSinceNumber": "two"})
            assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["eventsSinceNumber"]
            assert client.get("/fhir/Subscription/nope/$status").status_code == 404
            both = client.get("/fhir/Subscription/$status", params={"id": sub_id}).json()
            assert both["total"] == 1
    finally:
        receiver.close()


def test_topics_are_valid_and_advertised(sqlite_gateway: RunningGateway) -> None:
    files = sorted(PROFILES.glob("SubscriptionTopic-*.json"))
    urls = set()
    for path in files:
        doc = json.loads(path.read_text())
        SubscriptionTopic.model_validate(doc)
        assert doc["url"] == f"{codes.TOPIC_BASE}/{doc['id']}"
        assert any(f["filterParameter"] == "patient" for f in doc["canFilterBy"])
        assert any(f["filterParameter"] == "organization" for f in doc["canFilterBy"])
        urls.add(doc["url"])
    assert urls == {f"{codes.TOPIC_BASE}/{t}" for t in codes.TOPICS}
    with sqlite_gateway.http() as client:
        cs = client.get("/fhir/metadata").json()
    entry = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Subscription")
    assert {e["valueCanonical"] for e in entry["extension"] if e["url"] == CAPABILITY_TOPIC_EXT} == urls
    assert {op["name"] for op in entry["operation"]} == {"status", "events"}
