"""Helpers shared by the subscription tests: settings that make retries fast, a
Subscription builder, and no-shows sent over real MLLP."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from gateway import codes
from gateway.ingest.mllp_client import MllpClient
from gateway.notify.subscriptions import EXT_CONTENT, EXT_FILTER, EXT_HEARTBEAT, EXT_MAX_COUNT, EXT_TIMEOUT
from gateway.synthetic import make_child, siu_message

FAST = dict(delivery_retry_base_seconds=0.05, delivery_retry_max_seconds=0.3, delivery_timeout_seconds=1.0,
            delivery_poll_seconds=0.02)
SECRET = "a-test-secret-of-enough-length"


def subscription(endpoint: str, topic: str = codes.TOPIC_APPOINTMENT_NOSHOW, *, filters: list[str] = (),
                 content: str | None = "id-only", secret: str | None = SECRET, headers: list[str] = (),
                 heartbeat: int | None = None, timeout: int | None = None, max_count: int | None = None,
                 bound_to: dict[str, Any] | None = None, payload: str | None = "application/fhir+json") -> dict:
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload is not None:
        channel["payload"] = payload
    if content is not None:
        channel["_payload"] = {"extension": [{"url": EXT_CONTENT, "valueCode": content}]}
    if headers:
        channel["header"] = list(headers)
    ext = []
    if heartbeat:
        ext.append({"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat})
    if timeout:
        ext.append({"url": EXT_TIMEOUT, "valueUnsignedInt": timeout})
    if max_count:
        ext.append({"url": EXT_MAX_COUNT, "valuePositiveInt": max_count})
    if ext:
        channel["extension"] = ext
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]},
        "status": "requested", "reason": "test", "criteria": f"{codes.TOPIC_BASE}/{topic}", "channel": channel}
    if filters:
        sub["_criteria"] = {"extension": [{"url": EXT_FILTER, "valueString": f} for f in filters]}
    top = []
    if secret:
        top.append({"url": codes.EXT_SUBSCRIPTION_SECRET, "valueString": secret})
    if bound_to:
        top.append({"url": codes.EXT_SUBSCRIBER_ORGANIZATION, "valueReference": bound_to})
    if top:
        sub["extension"] = top
    return sub


def create_active(client: httpx.Client, sub: dict, timeout: float = 10.0) -> str:
    """POST the Subscription and wait for the handshake to make it active."""
    response = client.post("/fhir/Subscription", json=sub)
    assert response.status_code == 201, response.text
    sub_id = response.json()["id"]
    wait_status(client, sub_id, "active", timeout)
    return sub_id


def wait_status(client: httpx.Client, sub_id: str, status: str, timeout: float = 10.0) -> dict:
    deadline = time.time() + timeout
    body: dict = {}
    while time.time() < deadline:
        body = client.get(f"/fhir/Subscription/{sub_id}").json()
        if body.get("status") == status:
            return body
        time.sleep(0.02)
    raise AssertionError(f"Subscription/{sub_id} is {body.get('status')}, not {status}: {body.get('error')}")


def no_shows(port: int, count: int, *, first_child: int = 1, appointments_per_child: int = 1,
             start_control: int = 0) -> None:
    """Book then miss ``count`` appointments (SIU S12 then S26), over MLLP."""
    n = start_control
    with MllpClient("127.0.0.1", port) as mllp:
        for i in range(count):
            child = make_child(first_child + i // appointments_per_child)
            appt = i % appointments_per_child + 1
            when = datetime(2025, 5, 1, 9) 
            for event in ("S12", "S26"):
                n += 1
                ack = mllp.send(siu_message(child, appt, event, control_id=f"SUB{n:07d}", when=when))
                assert "MSA|AA" in ack, ack
