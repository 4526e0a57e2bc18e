"""The durable side of delivery, in SQL: matching outbox rows to subscriptions
(gapless event numbers), replica leases, and recording what each attempt did.

Everything here runs inside one short transaction of the delivery worker's tick
(notify/delivery.py); no HTTP happens while a transaction is open.

Several replicas on one PostgreSQL:

* **matching** is done by one replica at a time (``pg_try_advisory_xact_lock``), so
  every subscription's numbers follow outbox order; the outbox rows are read
  ``FOR UPDATE SKIP LOCKED`` and marked ``dispatched`` in the same transaction;
* **delivery** of a subscription belongs to the replica holding its lease
  (``lease_owner``/``lease_until_us``, claimed ``FOR UPDATE SKIP LOCKED``, renewed
  at half-life).  A replica that dies loses its leases when they expire and another
  takes over from ``delivered_through``: at-least-once, exactly-once in the normal
  case.  Progress is written only while the lease is still ours (fencing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from gateway.notify.subscriptions import SubscriptionConfig, matches
from gateway.store.unit_of_work import UnitOfWork, fhir_instant, loads

MATCH_BATCH = 2000
MATCHER_LOCK_KEY = 7_360_001  # pg advisory lock: one matcher across replicas
LIVE = "('requested', 'active')"


@dataclass(slots=True)
class LeasedSub:
    """A subscription this replica delivers, as read from subscription_state."""

    sub_id: str
    topic: str
    status: str
    version_id: int
    secret: str
    config: SubscriptionConfig
    events_count: int
    delivered_through: int
    attempts: int
    failing_since_us: int
    next_attempt_us: int
    last_sent_us: int


@dataclass(slots=True)
class Outcome:
    """One attempt and the subscription's delivery state after it."""

    sub_id: str
    kind: str  # handshake | heartbeat | event-notification
    first_event: int
    last_event: int
    http_status: int
    latency_ms: float
    ok: bool
    error: str
    at_us: int
    delivered_through: int
    attempts: int
    failing_since_us: int
    next_attempt_us: int
    last_sent_us: int
    status_change: str = ""  # active (handshake passed) | error (handshake failed, or retries exhausted)


@dataclass
class ConfigCache:
    by_sub: dict[str, tuple[int, SubscriptionConfig]] = field(default_factory=dict)

    def get(self, sub_id: str, version: int, text: str) -> SubscriptionConfig:
        known = self.by_sub.get(sub_id)
        if known is None or known[0] != version:
            known = self.by_sub[sub_id] = (version, SubscriptionConfig.from_json(text))
        return known[1]


def _pending(uow: UnitOfWork) -> str:
    # Literal predicates so the partial index (ix_outbox_events_pending) is used.
    return "dispatched = 0" if uow.dialect == "sqlite" else "NOT dispatched"


def live_subscriptions(uow: UnitOfWork) -> int:
    return uow.fetchone("SELECT COUNT(*) FROM subscription_state WHERE status <> 'off'")[0]


def has_pending(uow: UnitOfWork) -> bool:
    return uow.fetchone(f"SELECT 1 FROM outbox_events WHERE {_pending(uow)} LIMIT 1") is not None


def mark_all_dispatched(uow: UnitOfWork) -> None:
    """No subscriptions at all: nobody is owed these events."""
    true = "1" if uow.dialect == "sqlite" else "TRUE"
    uow.execute(f"UPDATE outbox_events SET dispatched = {true} WHERE {_pending(uow)}")


def match(uow: UnitOfWork, configs: ConfigCache, numbered: list | None = None) -> int:
    """Number the next outbox events for every subscription they match; returns
    how many outbox rows were handled (0: nothing waiting, or another replica matches).
    ``numbered`` receives the rows written, so this replica can deliver them without
    reading them back."""
    postgres = uow.dialect != "sqlite"
    if postgres and not uow.fetchone("SELECT pg_try_advisory_xact_lock(?)", (MATCHER_LOCK_KEY,))[0]:
        return 0
    rows = uow.fetchall(
        "SELECT id, created_at, topic, focus_type, focus_id, focus_version, patient_id, payload "
        f"FROM outbox_events WHERE {_pending(uow)} ORDER BY id LIMIT ?"
        + (" FOR UPDATE SKIP LOCKED" if postgres else ""), (MATCH_BATCH,))
    if not rows:
        return 0
    by_topic: dict[str, list[list]] = {}
    for sub_id, topic, version, text, start, count in uow.fetchall(
            "SELECT sub_id, topic, version_id, config, start_outbox_id, events_count FROM subscription_state "
            "WHERE status <> 'off'"):
        by_topic.setdefault(topic, []).append([sub_id, configs.get(sub_id, version, text), int(start), int(count),
                                               int(count)])
    inserts = []
    for out_id, created, topic, ftype, fid, fversion, patient_id, payload_text in rows:
        candidates = by_topic.get(topic)
        if not candidates:
            continue
        payload = loads(payload_text) if payload_text else {}
        filters = payload.get("filters") or {}
        if patient_id and "patient" not in filters:  # rows written before filters existed
            filters["patient"] = [f"Patient/{patient_id}"]
        context = orjson.dumps(payload.get("context") or ([f"Patient/{patient_id}"] if patient_id else [])).decode()
        for sub in candidates:
            if out_id > sub[2] and matches(sub[1], topic, filters):
                sub[3] += 1
                inserts.append((sub[0], sub[3], out_id, topic, created, ftype, fid, fversion, context))
    if numbered is not None:
        numbered.extend(inserts)
    uow.executemany(
        "INSERT INTO subscription_events (sub_id, event_number, outbox_id, topic, occurred_at, focus_type, "
        "focus_id, focus_version, context) VALUES (?,?,?,?,?,?,?,?,?)", inserts)
    uow.executemany("UPDATE subscription_state SET events_count=? WHERE sub_id=?",
                    [(sub[3], sub[0]) for subs in by_topic.values() for sub in subs if sub[3] != sub[4]])
    ids = [r[0] for r in rows]
    true = "1" if uow.dialect == "sqlite" else "TRUE"
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        uow.execute(f"UPDATE outbox_events SET dispatched = {true} WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk)
    return len(rows)


# --- leases -----------------------------------------------------------------------------------
def _claimable(me: str, now_us: int, lease_us: int) -> tuple[str, tuple]:
    return (f"status IN {LIVE} AND ((lease_owner = ? AND lease_until_us < ?) "
            "OR (lease_owner <> ? AND lease_until_us < ?))", (me, now_us + lease_us // 2, me, now_us))


def needs_claim(uow: UnitOfWork, me: str, now_us: int, lease_us: int) -> bool:
    cond, params = _claimable(me, now_us, lease_us)
    return uow.fetchone(f"SELECT 1 FROM subscription_state WHERE {cond} LIMIT 1", params) is not None


def claim(uow: UnitOfWork, me: str, now_us: int, lease_us: int) -> None:
    """Take (or renew) the leases of live subscriptions nobody else holds."""
    cond, params = _claimable(me, now_us, lease_us)
    if uow.dialect == "sqlite":
        uow.execute(f"UPDATE subscription_state SET lease_owner=?, lease_until_us=? WHERE {cond}",
                    (me, now_us + lease_us) + params)
        return
    ids = uow.fetchall(f"SELECT sub_id FROM subscription_state WHERE {cond} FOR UPDATE SKIP LOCKED", params)
    uow.executemany("UPDATE subscription_state SET lease_owner=?, lease_until_us=? WHERE sub_id=?",
                    [(me, now_us + lease_us, r[0]) for r in ids])


def leased(uow: UnitOfWork, me: str, configs: ConfigCache) -> list[LeasedSub]:
    rows = uow.fetchall(
        "SELECT sub_id, topic, status, version_id, secret, config, events_count, delivered_through, attempts, "
        "failing_since_us, next_attempt_us, last_sent_us FROM subscription_state "
        f"WHERE lease_owner=? AND status IN {LIVE}", (me,))
    return [LeasedSub(r[0], r[1], r[2], int(r[3]), r[4], configs.get(r[0], int(r[3]), r[5]), int(r[6]), int(r[7]),
                      int(r[8]), int(r[9]), int(r[10]), int(r[11])) for r in rows]


def release(uow: UnitOfWork, me: str) -> None:
    uow.execute("UPDATE subscription_state SET lease_owner='', lease_until_us=0 WHERE lease_owner=?", (me,))


# --- outcomes ---------------------------------------------------------------------------------
def record(uow: UnitOfWork, me: str, outcomes: list[Outcome]) -> None:
    """The delivery log rows, the state after the last attempt of each subscription
    (only while our lease holds), and status changes on the Subscription resources."""
    if not outcomes:
        return
    uow.executemany(
        "INSERT INTO delivery_attempts (at, at_us, sub_id, kind, first_event, last_event, http_status, "
        "latency_ms, outcome, error, replica) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        [(_instant(o.at_us), o.at_us, o.sub_id, o.kind, o.first_event, o.last_event, o.http_status,
          round(o.latency_ms, 3), "ok" if o.ok else "failed", o.error[:2000], me) for o in outcomes])
    latest: dict[str, Outcome] = {}
    for o in outcomes:
        latest[o.sub_id] = o
    uow.executemany(
        "UPDATE subscription_state SET delivered_through = CASE WHEN ? > delivered_through THEN ? "
        "ELSE delivered_through END, attempts=?, failing_since_us=?, next_attempt_us=?, "
        "last_sent_us = CASE WHEN ? > last_sent_us THEN ? ELSE last_sent_us END, last_error=? "
        "WHERE sub_id=? AND lease_owner=?",
        [(o.delivered_through, o.delivered_through, o.attempts, o.failing_since_us, o.next_attempt_us,
          o.last_sent_us, o.last_sent_us, "" if o.ok else o.error[:2000], o.sub_id, me) for o in latest.values()])
    for o in outcomes:
        if o.status_change:
            set_status(uow, o.sub_id, o.status_change, "" if o.ok else o.error)


def set_status(uow: UnitOfWork, sub_id: str, status: str, error: str = "") -> None:
    """Write the Subscription's new status (a new version), unless a client changed it meanwhile."""
    stored = uow.get("Subscription", sub_id)
    if stored is None or stored.deleted:
        return
    current = stored.resource.get("status")
    if (status == "active" and current != "requested") or (status == "error" and current not in ("active", "requested")):
        return
    resource = {k: v for k, v in stored.resource.items()}
    resource["status"] = status
    if error:
        resource["error"] = error[:500]
    else:
        resource.pop("error", None)
    uow.subscription_internal = True  # notify/subscriptions.py: the server's own status change
    uow.update("Subscription", sub_id, resource, before=stored)


def _instant(us: int) -> str:
    from datetime import datetime, timezone

    return fhir_instant(datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc))
