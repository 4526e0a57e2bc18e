"""``Subscription/{id}/$status`` and ``$events`` (Subscriptions R5 Backport IG), and
the delivery log (``GET /notify/deliveries``).

* ``$status`` (GET or POST; also type-level ``Subscription/$status?id=a,b``) — a
  ``searchset`` Bundle of SubscriptionStatus ``Parameters`` (type ``query-status``):
  status, topic, ``events-since-subscription-start``, and the last error if any.
* ``$events`` (GET or POST) — ``eventsSinceNumber`` / ``eventsUntilNumber``
  (inclusive; default: the last ``MAX_EVENTS``), ``content`` (empty | id-only |
  full-resource; default the subscription's) — a ``history`` Bundle shaped
  exactly like the original notifications (type ``query-event``), at most
  ``MAX_EVENTS`` events per call: page on with the next ``eventsSinceNumber``.
* ``GET /notify/deliveries`` — every delivery attempt, newest first; filters
  ``subscription``, ``outcome`` (ok | failed), ``kind``, ``event`` (an event number the
  attempt carried), ``since`` (instant), ``limit``, ``before`` (id, for paging).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import base_url, run_read
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.notify.notification import load_events, load_versions, notification_bundle, status_parameters
from gateway.notify.subscriptions import CONTENTS, SubscriptionConfig
from gateway.notify.topics import all_topics
from gateway.store import indexer
from gateway.store.reading import read_only
from gateway.store.unit_of_work import UnitOfWork, fhir_instant, utcnow

router = APIRouter()
MAX_EVENTS = 1000


async def _params(request: Request) -> list[tuple[str, str]]:
    """Query parameters, plus a POSTed Parameters resource's valueString/valueCode/valueId."""
    pairs = list(request.query_params.multi_items())
    if request.method == "POST":
        body = await request.body()
        if body.strip():
            from gateway.api.validation import parse_json_object

            doc = parse_json_object(body)
            if doc.get("resourceType") != "Parameters":
                raise FhirError(400, "the body of this operation must be a Parameters resource", code="invalid")
            for p in doc.get("parameter") or ():
                for key in ("valueString", "valueCode", "valueId", "valueUnsignedInt", "valueInteger",
                            "valueInteger64"):
                    if key in p:
                        pairs.append((p.get("name", ""), str(p[key])))
    return pairs


def _state(uow: UnitOfWork, sub_id: str) -> tuple[Any, ...]:
    stored = uow.get("Subscription", sub_id)
    if stored is None:
        raise FhirError(404, f"Subscription/{sub_id} is not known", code="not-found")
    if stored.deleted:
        raise FhirError(410, f"Subscription/{sub_id} was deleted", code="deleted")
    row = uow.fetchone("SELECT topic, status, events_count, config, last_error FROM subscription_state "
                       "WHERE sub_id=?", (sub_id,))
    if row is None:
        raise FhirError(404, f"Subscription/{sub_id} has no delivery state", code="not-found")
    return row


def _status_entry(uow: UnitOfWork, base: str, sub_id: str) -> dict[str, Any]:
    topic, status, count, _config, error = _state(uow, sub_id)
    params = status_parameters(base=base, sub_id=sub_id, topic_url=all_topics()[topic].url, status=status,
                               kind="query-status", events_since_start=int(count), events=[], content="empty",
                               error=error if status == "error" else "")
    return {"fullUrl": f"urn:uuid:{params['id']}", "resource": params, "search": {"mode": "match"}}


def _searchset(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "timestamp": fhir_instant(utcnow()),
            "total": len(entries), "entry": entries}


@router.api_route("/fhir/Subscription/{sub_id}/$status", methods=["GET", "POST"])
async def subscription_status(sub_id: str, request: Request) -> Response:
    base = base_url(request)

    def read() -> dict[str, Any]:
        with read_only(request.app.state.engine) as uow:
            return _searchset([_status_entry(uow, base, sub_id)])

    return FhirResponse(await run_read(request, read))


@router.api_route("/fhir/Subscription/$status", methods=["GET", "POST"])
async def subscriptions_status(request: Request) -> Response:
    base = base_url(request)
    ids = [i.strip() for k, v in await _params(request) if k in ("id", "_id") for i in v.split(",") if i.strip()]
    if not ids:
        raise FhirError(400, "name the subscriptions: Subscription/$status?id=a,b (or Subscription/{id}/$status)",
                        code="required", expression=["id"])

    def read() -> dict[str, Any]:
        with read_only(request.app.state.engine) as uow:
            return _searchset([_status_entry(uow, base, i) for i in ids])

    return FhirResponse(await run_read(request, read))


def _number(pairs: list[tuple[str, str]], name: str) -> int | None:
    values = [v for k, v in pairs if k == name]
    if not values:
        return None
    try:
        number = int(values[-1])
    except ValueError:
        raise FhirError(400, f"{name} must be an event number (an integer), got {values[-1]!r}",
                        code="invalid", expression=[name]) from None
    if number < 0:
        raise FhirError(400, f"{name} must not be negative", code="invalid", expression=[name])
    return number


@router.api_route("/fhir/Subscription/{sub_id}/$events", methods=["GET", "POST"])
async def subscription_events(sub_id: str, request: Request) -> Response:
    base = base_url(request)
    pairs = await _params(request)
    since = _number(pairs, "eventsSinceNumber")
    until = _number(pairs, "eventsUntilNumber")
    wanted = [v for k, v in pairs if k == "content"]
    if wanted and wanted[-1] not in CONTENTS:
        raise FhirError(400, f"content must be one of {', '.join(CONTENTS)}", code="invalid", expression=["content"])
    if since is not None and until is not None and until < since:
        raise FhirError(400, "eventsUntilNumber is before eventsSinceNumber", code="invalid",
                        expression=["eventsUntilNumber"])

    def read() -> dict[str, Any]:
        with read_only(request.app.state.engine) as uow:
            topic, status, count, config_text, _error = _state(uow, sub_id)
            count = int(count)
            content = wanted[-1] if wanted else SubscriptionConfig.from_json(config_text).content
            last = min(until if until is not None else count, count)
            first = since if since is not None else max(1, last - MAX_EVENTS + 1)
            events = load_events(uow, sub_id, max(first, 1), last, MAX_EVENTS)
            versions = load_versions(uow, events) if content == "full-resource" else {}
            return notification_bundle(base=base, sub_id=sub_id, topic_url=all_topics()[topic].url, status=status,
                                       kind="query-event", events_since_start=count, events=events,
                                       content=content, versions=versions)

    return FhirResponse(await run_read(request, read))


_LOG_COLUMNS = ("id", "at", "sub_id", "kind", "first_event", "last_event", "http_status", "latency_ms", "outcome",
                "error", "replica")


@router.get("/notify/deliveries")
async def deliveries(request: Request) -> Response:
    q = request.query_params
    where, args = [], []
    if q.get("subscription"):
        where.append("sub_id = ?")
        args.append(q["subscription"].rsplit("/", 1)[-1])
    if q.get("outcome"):
        where.append("outcome = ?")
        args.append(q["outcome"])
    if q.get("kind"):
        where.append("kind = ?")
        args.append(q["kind"])
    for name, clause in (("event", "first_event <= ? AND last_event >= ?"), ("before", "id < ?")):
        if q.get(name):
            if not q[name].isdigit():
                raise FhirError(400, f"{name} must be an integer", code="invalid", expression=[name])
            where.append(clause)
            args += [int(q[name])] * clause.count("?")
    if q.get("since"):
        rng = indexer.date_range(q["since"])
        if rng is None:
            raise FhirError(400, "since must be a FHIR instant or date", code="invalid", expression=["since"])
        where.append("at_us >= ?")
        args.append(rng[0])
    limit = q.get("limit", "100")
    if not limit.isdigit() or not 1 <= int(limit) <= 1000:
        raise FhirError(400, "limit must be 1..1000", code="invalid", expression=["limit"])
    clause = ("WHERE " + " AND ".join(where)) if where else ""

    def read() -> dict[str, Any]:
        with read_only(request.app.state.engine) as uow:
            rows = uow.fetchall(f"SELECT {', '.join(_LOG_COLUMNS)} FROM delivery_attempts {clause} "
                                f"ORDER BY id DESC LIMIT ?", args + [int(limit)])
        items = [dict(zip(_LOG_COLUMNS, r)) for r in rows]
        for item in items:
            item["subscription"] = f"Subscription/{item.pop('sub_id')}"
        return {"deliveries": items, "count": len(items),
                "next_before": items[-1]["id"] if len(items) == int(limit) else None}

    return FhirResponse(await run_read(request, read))
