"""The rules engine: which children a write affects, and their re-evaluation.

Registered as the after-change hook ``rules`` (order 30: after the child markers,
before the outbox events), so rules run inside the same transaction as the HL7
message, GP import or API write that triggered them — nothing is missed, and the
Flags/Tasks they write become events in the same commit.

Cheap by design (rules must cost <= 20 % of ingest): a change only triggers work
when it can matter —
- an Appointment whose status, start, service, cancellation reason, comment or
  patient changed: a no-show / cancellation (or a correction of one) re-evaluates
  the child, if a child on that day; a booking only does when a quick indexed
  count finds enough bookings nearby for R6, or the child has a complex-needs
  marker (R8);
- a marker Flag (not the rules' own), a ServiceRequest's status/closure, a
  CarePlan/CareTeam, an EpisodeOfCare's status, a Task being closed, a Patient's
  birth date / GP practice.
Each affected child is evaluated once per round.  Re-evaluation is idempotent:
the rules compare what they want with what is stored and write only differences.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from gateway import codes
from gateway.rules import care_plan, config, coordination, discharge, drift, wnb
from gateway.rules import flags as flag_writer
from gateway.rules import tasks as task_writer  # noqa: F401 - registers the Task completion check
from gateway.rules.context import Evaluation
from gateway.rules.facts import gather, is_child_on, parse_date, parse_instant, rule_tag
from gateway.settings import current_settings
from gateway.store.hooks import after_changes
from gateway.store.indexer import split_reference, to_us
from gateway.store.unit_of_work import Change, UnitOfWork

log = logging.getLogger("gateway.rules")

_APPT_FIELDS = ("status", "start", "serviceType", "specialty", "cancelationReason", "comment", "participant")


def evaluate_child(uow: UnitOfWork, patient_id: str, cfg: config.RulesConfig, now: datetime, *,
                   scheduled: bool = False) -> Evaluation | None:
    """Run every rule for one child; returns what was done (None: no such Patient)."""
    record = gather(uow, patient_id, cfg)
    if record is None:
        return None
    ev = Evaluation(uow, record, cfg, now, scheduled)
    level = drift.due(ev, flag_writer.open_flag(record, wnb.R1)) if scheduled else None
    wnb.evaluate_wnb(ev, level)
    wnb.evaluate_dne(ev)
    discharge.evaluate(ev)
    coordination.evaluate(ev)
    care_plan.evaluate(ev)
    return ev


def _patients(resource: dict[str, Any] | None) -> set[str]:
    found: set[str] = set()
    if not resource:
        return found
    for participant in resource.get("participant") or ():
        target = split_reference((participant.get("actor") or {}).get("reference", ""))
        if target and target[0] == "Patient":
            found.add(target[1])
    for key in ("subject", "patient", "for"):
        target = split_reference((resource.get(key) or {}).get("reference", ""))
        if target and target[0] == "Patient":
            found.add(target[1])
    return found


def _live(stored) -> dict[str, Any] | None:  # noqa: ANN001
    return stored.resource if stored is not None and not stored.deleted else None


def _is_marker(flag: dict[str, Any] | None) -> bool:
    if not flag or rule_tag(flag):
        return False
    return any(c.get("system") == codes.FLAG_CODES and c.get("code") in codes.MARKER_FLAGS
               for c in (flag.get("code") or {}).get("coding") or ())


def _changed(before: dict[str, Any] | None, after: dict[str, Any] | None, keys: tuple[str, ...]) -> bool:
    if before is None or after is None:
        return True
    return any(before.get(k) != after.get(k) for k in keys)


class _Affected:
    def __init__(self, uow: UnitOfWork, cfg: config.RulesConfig) -> None:
        self.uow, self.cfg = uow, cfg
        self.children: dict[str, None] = {}

    def add(self, ids: set[str]) -> None:
        for pid in ids:
            self.children.setdefault(pid, None)

    def appointment(self, before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        if not _changed(before, after, _APPT_FIELDS):
            return
        counted = self.cfg.wnb_statuses | self.cfg.cancelled_statuses
        statuses = {(before or {}).get("status"), (after or {}).get("status")}
        patients = _patients(before) | _patients(after)
        if statuses & counted:
            for pid in patients:
                if pid not in self.children and self._child_on(pid, (after or before or {}).get("start")):
                    self.children[pid] = None
            return
        if after is None or after.get("status") not in self.cfg.booked_statuses:
            return
        for pid in _patients(after):
            if pid not in self.children and self._booking_matters(pid, after):
                self.children[pid] = None

    def _child_on(self, pid: str, start: str | None) -> bool:
        stored = self.uow.get("Patient", pid)
        if stored is None or stored.deleted:
            return False
        return is_child_on(parse_date(stored.resource.get("birthDate")), parse_instant(start) or self.uow.now,
                           self.cfg.child_age_under)

    def _booking_matters(self, pid: str, appt: dict[str, Any]) -> bool:
        """R6 / R8 only: an indexed count of nearby bookings, or a complex-needs marker."""
        start = parse_instant(appt.get("start"))
        if start is None or not self._child_on(pid, appt.get("start")):
            return False
        rule = self.cfg.rule(coordination.R6)
        width = timedelta(days=rule["window_days"])
        low, high = start - width, start + width
        if rule["upcoming_only"]:
            low = max(low, self.uow.now)
        statuses = sorted(self.cfg.booked_statuses)
        markers = self.cfg.rule(care_plan.R8)["markers"]
        # One round trip: nearby bookings (R6) and an active complex-needs marker (R8).  Both
        # driven from the child's own references (EXISTS per row): a child has few
        # appointments and flags, while "every active Flag" can be thousands.
        row = self.uow.fetchone(
            "SELECT (SELECT COUNT(*) FROM idx_reference x "
            "WHERE x.res_type = 'Appointment' AND x.param = 'patient' AND x.target_id = ? AND x.target_type = 'Patient' "
            "AND EXISTS (SELECT 1 FROM idx_token s WHERE s.res_id = x.res_id AND s.res_type = 'Appointment' "
            f"AND s.param = 'status' AND s.code IN ({','.join('?' for _ in statuses)})) "
            "AND EXISTS (SELECT 1 FROM idx_date d WHERE d.res_id = x.res_id AND d.res_type = 'Appointment' "
            "AND d.param = 'date' AND d.low_us >= ? AND d.low_us <= ?)), "
            "(SELECT COUNT(*) FROM idx_reference x "
            "WHERE x.res_type = 'Flag' AND x.param = 'patient' AND x.target_id = ? AND x.target_type = 'Patient' "
            "AND EXISTS (SELECT 1 FROM idx_token c WHERE c.res_id = x.res_id AND c.res_type = 'Flag' "
            f"AND c.param = 'code' AND c.system = ? AND c.code IN ({','.join('?' for _ in markers)})) "
            "AND EXISTS (SELECT 1 FROM idx_token s WHERE s.res_id = x.res_id AND s.res_type = 'Flag' "
            "AND s.param = 'status' AND s.code || '' = 'active'))",  # || '': seek by res_id, not by status
            (pid, *statuses, to_us(low), to_us(high), pid, codes.FLAG_CODES, *markers))
        nearby = row[0] if high >= low else 0
        return nearby >= rule["threshold"] or row[1] > 0

    def change(self, change: Change) -> None:
        after = _live(change.after)
        before = _live(change.before) if change.before is not None else None
        rtype = change.after.res_type
        if rtype == "Appointment":
            self.appointment(before, after)
        elif rtype == "Flag":
            if _is_marker(before) or _is_marker(after):
                if _changed(before, after, ("status", "code", "subject")):
                    self.add(_patients(before) | _patients(after))
        elif rtype == "Task":
            was = (before or {}).get("status")
            now = (after or {}).get("status")
            if was != now and now in ("completed", "cancelled", "failed", "rejected", "entered-in-error"):
                self.add(_patients(after) | _patients(before))
        elif rtype == "ServiceRequest":
            if _changed(before, after, ("status", "extension", "subject", "performer", "authoredOn")):
                self.add(_patients(before) | _patients(after))
        elif rtype in ("CarePlan", "CareTeam"):
            self.add(_patients(before) | _patients(after))
        elif rtype == "EpisodeOfCare":
            if _changed(before, after, ("status", "period", "patient")):
                self.add(_patients(before) | _patients(after))
        elif rtype == "Patient" and before is not None and after is not None:
            if _changed(before, after, ("birthDate", "generalPractitioner")):
                self.add({change.after.res_id})


@after_changes(order=30, name="rules")
def run_rules(uow: UnitOfWork, changes: list[Change]) -> None:
    """The event-driven rules, inside the write's own transaction."""
    settings = current_settings()
    if not settings.rules_enabled:
        return
    cfg = config.current(settings.rules_file)
    affected = _Affected(uow, cfg)
    for change in changes:
        affected.change(change)
    for pid in affected.children:
        evaluate_child(uow, pid, cfg, uow.now)


def flagged_children(uow: UnitOfWork) -> list[str]:
    """Children with an open Flag the rules raised (the scheduler's work list)."""
    rule_codes = (codes.FLAG_WNB, codes.FLAG_DISGUISED_NON_ENGAGEMENT, codes.FLAG_DISCHARGED_AFTER_WNB,
                  codes.FLAG_NO_CARE_PLAN)
    rows = uow.fetchall(
        "SELECT DISTINCT x.target_id FROM idx_reference x "
        "JOIN idx_token c ON c.res_id = x.res_id AND c.res_type = 'Flag' AND c.param = 'code' AND c.system = ? "
        "AND c.code IN (?,?,?,?) "
        "JOIN idx_token s ON s.res_id = x.res_id AND s.res_type = 'Flag' AND s.param = 'status' AND s.code = 'active' "
        "WHERE x.res_type = 'Flag' AND x.param = 'patient' AND x.target_type = 'Patient' ORDER BY x.target_id",
        (codes.FLAG_CODES, *rule_codes))
    return [r[0] for r in rows]
