"""Notification Bundles as the Backport IG shapes them for R4.

A notification is a ``history`` Bundle whose first entry is a ``Parameters``
resource (profile backport-subscription-status-r4) saying which subscription,
topic and status, the ``type`` (handshake | heartbeat | event-notification |
query-status | query-event), ``events-since-subscription-start`` and one
``notification-event`` per event (``event-number``, ``timestamp``, ``focus``,
``additional-context``).  Then, unless the payload is ``empty``, one entry per
focus: ``id-only`` gives its fullUrl and request, ``full-resource`` the resource
as it was at that event (the version, not today's).

Also used by ``$status`` and ``$events`` (api/operations/subscription_status.py),
so a replay is byte-for-byte the same shape as the original delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Any

from gateway.store.unit_of_work import UnitOfWork, fhir_instant, loads, utcnow

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
STATUS_PROFILE = f"{BACKPORT}/backport-subscription-status-r4"
NOTIFICATION_PROFILE = f"{BACKPORT}/backport-subscription-notification-r4"
SIGNATURE_HEADER = "X-Gateway-Signature"
SUBSCRIPTION_HEADER = "X-Gateway-Subscription"


@dataclass(slots=True)
class Event:
    """One numbered event of one subscription (a subscription_events row)."""

    number: int
    occurred_at: str
    topic: str
    focus_type: str
    focus_id: str
    focus_version: int
    context: list[str]


def sign(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of the exact body bytes>`` (the X-Gateway-Signature value)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (documented in docs/subscriptions.md); constant-time compare."""
    return hmac.compare_digest(sign(secret, body), header or "")


def _ref(base: str, rtype: str, rid: str) -> str:
    return f"{base}/{rtype}/{rid}" if base else f"{rtype}/{rid}"


def status_parameters(*, base: str, sub_id: str, topic_url: str, status: str, kind: str,
                      events_since_start: int, events: list[Event], content: str,
                      error: str = "") -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": _ref(base, "Subscription", sub_id)}},
        {"name": "topic", "valueCanonical": topic_url},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        # R4 has no integer64: the IG carries the counters as strings.
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        part: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(event.number)}]
        part += _event_parts(base, event, content)
        params.append({"name": "notification-event", "part": part})
    if error:
        params.append({"name": "error", "valueCodeableConcept": {"text": error}})
    return {"resourceType": "Parameters", "id": str(uuid.uuid4()), "meta": {"profile": [STATUS_PROFILE]},
            "parameter": params}


def notification_bundle(*, base: str, sub_id: str, topic_url: str, status: str, kind: str,
                        events_since_start: int, events: list[Event], content: str,
                        versions: dict[tuple[str, str, int], tuple[bool, dict[str, Any]]] | None = None,
                        error: str = "") -> dict[str, Any]:
    """The history Bundle (``versions``: the focus versions, for full-resource)."""
    params = status_parameters(base=base, sub_id=sub_id, topic_url=topic_url, status=status, kind=kind,
                               events_since_start=events_since_start, events=events, content=content,
                               error=error)
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{params['id']}", "resource": params,
        "request": {"method": "GET", "url": f"Subscription/{sub_id}/$status"},
        "response": {"status": "200"},
    }]
    if content == "id-only":
        for event in events:
            entries.append(_shared(("entry", base, event.focus_type, event.focus_id, event.focus_version),
                                   lambda event=event: _focus_entry(base, event, content, {})))
    elif content != "empty":
        for event in events:
            entries.append(_focus_entry(base, event, content, versions or {}))
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "meta": {"profile": [NOTIFICATION_PROFILE]},
            "type": "history", "timestamp": fhir_instant(utcnow()), "entry": entries}


# One event goes to every matching subscription (50 in the benchmark): the parts that
# do not depend on the subscription are built once and shared (orjson only reads them).
_SHARED: dict[tuple, Any] = {}
_SHARED_MAX = 50_000


def _shared(key: tuple, build: Any) -> Any:
    value = _SHARED.get(key)
    if value is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        value = _SHARED[key] = build()
    return value


def _event_parts(base: str, event: Event, content: str) -> list[dict[str, Any]]:
    def build() -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"name": "timestamp", "valueInstant": event.occurred_at}]
        if content != "empty":
            parts.append({"name": "focus", "valueReference": {
                "reference": _ref(base, event.focus_type, event.focus_id)}})
            for ref in event.context:
                parts.append({"name": "additional-context", "valueReference": {"reference": ref}})
        return parts

    return _shared(("parts", base, content, event.occurred_at, event.focus_type, event.focus_id,
                    tuple(event.context)), build)


def _focus_entry(base: str, event: Event, content: str,
                 versions: dict[tuple[str, str, int], tuple[bool, dict[str, Any]]]) -> dict[str, Any]:
    deleted, resource = versions.get((event.focus_type, event.focus_id, event.focus_version), (False, None))
    url = f"{event.focus_type}/{event.focus_id}"
    method = "DELETE" if deleted else ("POST" if event.focus_version == 1 else "PUT")
    entry: dict[str, Any] = {
        "fullUrl": _ref(base, event.focus_type, event.focus_id),
        "request": {"method": method, "url": url if method != "POST" else event.focus_type},
        "response": {"status": "201" if method == "POST" else ("204" if deleted else "200"),
                     "etag": f'W/"{event.focus_version}"'},
    }
    if content == "full-resource" and resource is not None and not deleted:
        entry["resource"] = resource
    return entry


def load_versions(uow: UnitOfWork, events: list[Event]) -> dict[tuple[str, str, int], tuple[bool, dict[str, Any]]]:
    """The focus resources as they were at each event (resource_versions)."""
    out: dict[tuple[str, str, int], tuple[bool, dict[str, Any]]] = {}
    for event in events:
        key = (event.focus_type, event.focus_id, event.focus_version)
        if key in out:
            continue
        row = uow.fetchone("SELECT deleted, content FROM resource_versions WHERE res_type=? AND res_id=? "
                           "AND version_id=?", key)
        if row is not None:
            out[key] = (bool(row[0]), loads(row[1]))
    return out


def load_events(uow: UnitOfWork, sub_id: str, first: int, last: int, limit: int) -> list[Event]:
    rows = uow.fetchall(
        "SELECT event_number, occurred_at, topic, focus_type, focus_id, focus_version, context "
        "FROM subscription_events WHERE sub_id=? AND event_number>=? AND event_number<=? "
        "ORDER BY event_number LIMIT ?", (sub_id, first, last, limit))
    return [Event(int(r[0]), r[1], r[2], r[3], r[4], int(r[5]), loads(r[6])) for r in rows]
