"""R4: no discharge for non-attendance without review (rec. 1.4).

Triggers (what the feeds give us; docs/rules.md):
- an Appointment of the child whose ``cancelationReason`` carries a discharge code
  (``prov-dch`` or a local code from the rules file, e.g. SCH-6 ``DISCH`` on a SIU
  S26/S15), when it is itself a no-show or the child missed an appointment at the
  same service within ``wnb_lookback_months`` before it;
- a ServiceRequest ``revoked``/``completed`` carrying the closure-reason extension
  with a non-attendance code (REF^I14/I15 map to it; FHIR clients may set it);
- an EpisodeOfCare ``finished`` when the child missed an appointment within
  ``wnb_lookback_months`` before the episode ended.

Each trigger gets a "discharge review" Task for the discharging service (the
appointment's HealthcareService, the ServiceRequest's performer, the episode's
managing organisation) and one for the registered GP practice.  The Flag stays
active until every trigger has a review Task completed — with an outcome, which
tasks.py enforces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import codes
from gateway.rules import flags as flag_writer
from gateway.rules import tasks as task_writer
from gateway.rules.context import Evaluation
from gateway.rules.facts import Appt, add_months, codings, concept_label, is_child_on, parse_date, parse_instant
from gateway.rules.flags import FlagSpec
from gateway.rules.tasks import TaskSpec
from gateway.rules.wording import join, plural
from gateway.store.indexer import split_reference

R4 = "R4-discharge-after-wnb"


@dataclass
class Trigger:
    ref: str
    what: str  # plain English
    service: str  # discharging service label
    owner: str  # discharging service reference ('' if unknown)
    wnbs: list[Appt]


def _actor(resource: dict[str, Any], wanted: tuple[str, ...]) -> str:
    for participant in resource.get("participant") or ():
        target = split_reference((participant.get("actor") or {}).get("reference", ""))
        if target and target[0] in wanted:
            return f"{target[0]}/{target[1]}"
    return ""


def _wnbs_before(ev: Evaluation, moment, service_key: str | None) -> list[Appt]:
    months = ev.cfg.rule(R4)["wnb_lookback_months"]
    low = add_months(moment, -months)
    return [a for a in ev.record.appointments
            if a.status in ev.cfg.wnb_statuses and a.child_at_date and a.start is not None
            and low < a.start <= moment and (service_key is None or a.service_key == service_key)]


def triggers(ev: Evaluation) -> list[Trigger]:
    found: list[Trigger] = []
    cfg = ev.cfg
    birth = parse_date(ev.record.patient.get("birthDate"))
    for appt in ev.record.appointments:
        if not appt.discharged or not appt.child_at_date or appt.start is None:
            continue
        wnbs = _wnbs_before(ev, appt.start, appt.service_key)
        if appt.status in cfg.wnb_statuses and appt not in wnbs:
            wnbs.append(appt)
        if wnbs:
            found.append(Trigger(appt.ref, f"{appt.service_label} discharged the child on {appt.day}",
                                 appt.service_label, _actor(appt.resource, ("HealthcareService", "Organization")),
                                 wnbs))
    for request in ev.record.service_requests:
        if request.get("status") not in ("revoked", "completed"):
            continue
        reasons = [e.get("valueCodeableConcept") for e in request.get("extension") or ()
                   if e.get("url") == codes.EXT_CLOSURE_REASON]
        if not any(str(c.get("code", "")).lower() in cfg.closure_non_attendance_codes
                   for r in reasons for c in codings(r)):
            continue
        if not is_child_on(birth, ev.now, cfg.child_age_under):
            continue
        performer = next((p for p in request.get("performer") or () if p.get("reference")), {})
        target = split_reference(performer.get("reference", ""))
        service = performer.get("display") or concept_label(request.get("performerType")) \
            or concept_label(request.get("code")) or "the receiving service"
        closed = parse_instant((request.get("meta") or {}).get("lastUpdated")) or ev.now
        found.append(Trigger(f"ServiceRequest/{request['id']}",
                             f"the referral to {service} was closed for non-attendance", service,
                             f"{target[0]}/{target[1]}" if target else "", _wnbs_before(ev, closed, None)))
    for episode in ev.record.episodes:
        if episode.get("status") != "finished":
            continue
        ended = parse_instant((episode.get("period") or {}).get("end")) or ev.now
        if not is_child_on(birth, ended, cfg.child_age_under):
            continue
        wnbs = _wnbs_before(ev, ended, None)
        if not wnbs:
            continue
        org = (episode.get("managingOrganization") or {})
        target = split_reference(org.get("reference", ""))
        service = org.get("display") or concept_label((episode.get("type") or [None])[0]) or "a service"
        found.append(Trigger(f"EpisodeOfCare/{episode['id']}",
                             f"{service} ended its episode of care on {ended.date().isoformat()}", service,
                             f"{target[0]}/{target[1]}" if target else "", wnbs))
    return found


def reviewed(ev: Evaluation, trigger: Trigger) -> bool:
    return any(t.get("status") == "completed"
               for t in task_writer.find(ev.record, codes.TASK_DISCHARGE_REVIEW, trigger.ref))


def evaluate(ev: Evaluation) -> flag_writer.FlagResult:
    rule = ev.cfg.rule(R4)
    pending = [t for t in triggers(ev) if not reviewed(ev, t)]
    spec = None
    if pending:
        missed = sorted({a.ref: a for t in pending for a in t.wnbs}.values(), key=lambda a: (a.start, a.id))
        text = (f"{join(t.what for t in pending)}, after {plural(len(missed), 'appointment')} not brought to "
                f"({join(f'{a.service_label}, {a.day}' for a in missed)}). Review required: a child should not "
                "be discharged for non-attendance without regard to why.") if missed else (
                f"{join(t.what for t in pending)}. Review required: a child should not be discharged for "
                "non-attendance without regard to why.")
        text = text[0].upper() + text[1:]
        evidence = [(t.ref, t.what) for t in pending] + [(a.ref, f"Not brought: {a.service_label}, {a.day}")
                                                          for a in missed]
        spec = FlagSpec(rule, codes.FLAG_DISCHARGED_AFTER_WNB, text, evidence, rule["base_priority"])
    result = flag_writer.reconcile(ev.uow, ev.record, rule, spec, ev.stamp)
    ev.note(R4, result.action, result.ref)
    if spec is None:
        return result
    gp = ev.record.gp_ref()
    for trigger in pending:
        owners = [o for o in dict.fromkeys([trigger.owner, gp]) if o] or [""]
        for owner in owners:
            who = "the registered GP practice" if owner == gp and owner else trigger.service
            task = TaskSpec(rule, codes.TASK_DISCHARGE_REVIEW,
                            f"Review the discharge: {trigger.what} after the child was not brought. Consider "
                            "the child's needs and circumstances, contact the family and the professionals "
                            f"involved, and record the outcome ({who}).", trigger.ref, owner,
                            [(trigger.ref, trigger.what)] + [(a.ref, f"Not brought: {a.service_label}, {a.day}")
                                                             for a in trigger.wnbs],
                            priority="urgent", note=f"Raised by rule {rule.tag} for Flag/{result.flag['id']}.")
            action, written = task_writer.ensure(ev.uow, ev.record, task, ev.stamp)
            ev.note(R4, action, f"Task/{written['id']}" if written else "")
    return result
