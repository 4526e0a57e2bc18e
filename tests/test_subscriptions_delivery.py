"""Subscription delivery end to end: a real gateway, real MLLP, a real HTTP receiver."""

from __future__ import annotations

import time
from typing import Iterator

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.parameters import Parameters

from conftest import RunningGateway, gateway_settings
from gateway import codes
from gateway.notify.notification import SIGNATURE_HEADER, SUBSCRIPTION_HEADER, verify
from subscription_helpers import FAST, SECRET, create_active, no_shows, subscription, wait_status
from subscription_receiver import Receiver


@pytest.fixture
def fast_gateway(database_url: str) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(database_url, **FAST)).start()
    yield running
    running.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_handshake_then_noshow_over_mllp_is_event_1_signed(fast_gateway: RunningGateway, receiver: Receiver) -> None:
    with fast_gateway.http() as client:
        sub_id = create_active(client, subscription(receiver.url, headers=["Authorization: Bearer t0ken"]))
        handshake = receiver.notifications("handshake")
        assert len(handshake) == 1
        assert handshake[0].param("status") == "requested"
        assert handshake[0].param("events-since-subscription-start") == "0"

        no_shows(fast_gateway.mllp_port, 1)
        assert receiver.wait_for(lambda r: r.event_numbers() == [1]), receiver.received
        note = receiver.notifications()[0]
        # The IG's shape: a history Bundle, SubscriptionStatus Parameters first.
        Bundle.model_validate(note.bundle)
        Parameters.model_validate(note.status)
        assert note.bundle["type"] == "history"
        assert note.param("type") == "event-notification"
        assert note.param("topic") == f"{codes.TOPIC_BASE}/{codes.TOPIC_APPOINTMENT_NOSHOW}"
        assert note.param("subscription")["reference"].endswith(f"Subscription/{sub_id}")
        assert note.param("events-since-subscription-start") == "1"
        assert note.focuses[0].split("/")[-2] == "Appointment"
        appointment = client.get("/fhir/" + "/".join(note.focuses[0].split("/")[-2:])).json()
        assert appointment["status"] == "noshow"
        # id-only: the focus entry carries no resource
        assert len(note.bundle["entry"]) == 2 and "resource" not in note.bundle["entry"][1]
        # Signed with the subscription's secret; the configured header is sent.
        assert verify(SECRET, note.body, note.headers[SIGNATURE_HEADER])
        assert not verify("another-secret-entirely", note.body, note.headers[SIGNATURE_HEADER])
        assert note.headers[SUBSCRIPTION_HEADER] == sub_id
        assert note.headers["Authorization"] == "Bearer t0ken"
        # The secret is write-only.
        assert "subscription-secret" not in client.get(f"/fhir/Subscription/{sub_id}").text
        # Every attempt is in the delivery log.
        log = client.get("/notify/deliveries", params={"subscription": sub_id}).json()["deliveries"]
        kinds = sorted((d["kind"], d["outcome"], d["http_status"]) for d in log)
        assert kinds == [("event-notification", "ok", 200), ("handshake", "ok", 200)]
        assert client.get("/notify/deliveries", params={"subscription": sub_id, "event": 1}).json()["count"] == 1


def _patient_id(client, child_index: int = 1) -> str:  # noqa: ANN001
    from gateway.synthetic import make_child

    nhs = make_child(child_index).nhs_number
    bundle = client.get("/fhir/Patient", params={"identifier": f"{codes.NHS_NUMBER}|{nhs}"}).json()
    return bundle["entry"][0]["resource"]["id"]


def test_noshow_leads_to_wnb_flag_notification(fast_gateway: RunningGateway, receiver: Receiver) -> None:
    """A no-show -> a WNB Flag -> a wnb-flag notification, event-number 1, signed.  The Flag
    comes from the rules engine if its thresholds fire on one no-show; otherwise the test
    raises it through the FHIR API as a professional would (it tests delivery, not rules)."""
    with fast_gateway.http() as client:
        create_active(client, subscription(receiver.url, codes.TOPIC_WNB_FLAG, content="full-resource"))
        no_shows(fast_gateway.mllp_port, 1)
        if not receiver.wait_for(lambda r: r.notifications(), timeout=2.0):
            flag = {"resourceType": "Flag", "status": "active",
                    "category": [{"coding": [{"system": codes.FLAG_CATEGORY, "code": "safety"}]}],
                    "code": {"coding": [{"system": codes.FLAG_CODES, "code": codes.FLAG_WNB}]},
                    "subject": {"reference": f"Patient/{_patient_id(client)}"}}
            response = client.post("/fhir/Flag", json=flag)
            assert response.status_code == 201, response.text
        assert receiver.wait_for(lambda r: r.notifications())
        note = receiver.notifications()[0]
        assert note.event_numbers[0] == 1
        assert verify(SECRET, note.body, note.headers[SIGNATURE_HEADER])
        flag = note.bundle["entry"][1]["resource"]  # full-resource: the Flag as it was
        assert flag["resourceType"] == "Flag"
        assert flag["code"]["coding"][0]["code"] == codes.FLAG_WNB


def test_receiver_down_while_50_events_happen_then_all_arrive_in_order(
        fast_gateway: RunningGateway, receiver: Receiver) -> None:
    with fast_gateway.http() as client:
        sub_id = create_active(client, subscription(receiver.url, max_count=7))
        receiver.down()
        no_shows(fast_gateway.mllp_port, 50)
        time.sleep(0.5)  # several attempts fail (connection refused) meanwhile
        receiver.up()
        assert receiver.wait_for(lambda r: len(r.event_numbers()) >= 50, timeout=20), receiver.event_numbers()
        numbers = receiver.event_numbers()
        assert numbers == list(range(1, 51))  # in order, gapless, no duplicates
        assert all(len(n.event_numbers) <= 7 for n in receiver.notifications())  # backport-max-count kept
        failed = client.get("/notify/deliveries", params={"subscription": sub_id, "outcome": "failed"}).json()
        assert failed["count"] >= 1 and all(d["http_status"] == 0 for d in failed["deliveries"])
        status = client.get(f"/fhir/Subscription/{sub_id}/$status").json()["entry"][0]["resource"]
        assert {"name": "events-since-subscription-start", "valueString": "50"} in status["parameter"]


def test_failing_slow_and_dead_endpoints_never_delay_a_healthy_one(fast_gateway: RunningGateway) -> None:
    healthy, failing, slow, dead = Receiver(), Receiver("fail"), Receiver("slow", slow_seconds=3), Receiver()
    dead.down()
    try:
        with fast_gateway.http() as client:
            ids = {}
            for name, r in (("healthy", healthy), ("failing", failing), ("slow", slow), ("dead", dead)):
                # Only the healthy one can pass a handshake: start the others healthy, then break them.
                mode = r.mode
                r.mode = "ok"
                if r is dead:
                    r.up()
                ids[name] = create_active(client, subscription(r.url))
                r.mode = mode
            dead.down()
            started = time.time()
            no_shows(fast_gateway.mllp_port, 5)
            assert healthy.wait_for(lambda r: r.event_numbers() == [1, 2, 3, 4, 5], timeout=5)
            assert time.time() - started < 3.0  # not held up by a 1 s timeout, let alone retries
            time.sleep(1.5)
            log = client.get("/notify/deliveries", params={"outcome": "failed"}).json()["deliveries"]
            by_sub = {d["subscription"].split("/")[1]: d for d in log}
            assert by_sub[ids["failing"]]["http_status"] == 500
            assert by_sub[ids["slow"]]["http_status"] == 0 and "timed out" in by_sub[ids["slow"]]["error"]
            assert by_sub[ids["dead"]]["http_status"] == 0
            # Backoff, not a hot loop: a handful of attempts in ~2 s, not hundreds.
            attempts = [d for d in log if d["subscription"] == f"Subscription/{ids['failing']}"]
            assert 2 <= len(attempts) <= 20
            # Recovery: each gets everything, in order, nothing lost.
            failing.mode = "ok"
            slow.mode = "ok"
            dead.up()
            for r in (failing, slow, dead):
                assert r.wait_for(lambda x: x.event_numbers()[-5:] == [1, 2, 3, 4, 5], timeout=10), r.event_numbers()
                assert sorted(set(r.event_numbers())) == [1, 2, 3, 4, 5]
    finally:
        for r in (healthy, failing, slow, dead):
            r.close()


def test_retries_exhausted_mark_error_and_events_stay_replayable(database_url: str, receiver: Receiver) -> None:
    settings = gateway_settings(database_url, **{**FAST, "delivery_retry_hours": 0.5 / 3600})
    running = RunningGateway(settings).start()
    try:
        with running.http() as client:
            sub_id = create_active(client, subscription(receiver.url))
            receiver.mode = "fail"
            no_shows(running.mllp_port, 2)
            body = wait_status(client, sub_id, "error", timeout=10)
            assert "gave up" in body["error"] and "HTTP 500" in body["error"]
            events = client.get(f"/fhir/Subscription/{sub_id}/$events").json()
            numbers = [p for p in events["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]
            assert len(numbers) == 2
            # Reactivation (status requested) -> handshake -> the backlog is delivered.
            receiver.mode = "ok"
            body["status"] = "requested"
            assert client.put(f"/fhir/Subscription/{sub_id}", json=body).status_code == 200
            wait_status(client, sub_id, "active")
            assert receiver.wait_for(lambda r: r.event_numbers() == [1, 2]), receiver.event_numbers()
    finally:
        running.stop()


def test_handshake_failure_is_error_and_heartbeats_flow(fast_gateway: RunningGateway, receiver: Receiver) -> None:
    with fast_gateway.http() as client:
        receiver.mode = "fail"
        response = client.post("/fhir/Subscription", json=subscription(receiver.url))
        sub_id = response.json()["id"]
        assert response.json()["status"] == "requested"
        body = wait_status(client, sub_id, "error")
        assert "handshake failed" in body["error"]
        receiver.mode = "ok"
        beat_id = create_active(client, subscription(receiver.url, heartbeat=1))
        assert receiver.wait_for(lambda r: len(r.notifications("heartbeat")) >= 2, timeout=5)
        beat = receiver.notifications("heartbeat")[0]
        assert beat.param("subscription")["reference"].endswith(beat_id)
        assert beat.param("events-since-subscription-start") == "0"
