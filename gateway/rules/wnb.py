"""R1 significance (was-not-brought and disguised non-engagement), R2 liaison, R5 enquiry.

R1: every missed appointment (``noshow``) of a child is weighed, whatever its
source.  A WNB Flag is raised when a child with a marker (complex needs, child
protection plan, looked after, safeguarding concern) misses ``marked_threshold``
(1), or any child misses ``threshold`` (2) within ``window_months`` (12) across
all services — or a service's own ``wnb_threshold`` at that service alone.
Provider cancellations and attended appointments never count.  Cancellations by
the patient/carer count towards a separate, lower-priority "disguised
non-engagement" Flag (3 in 6 months).

Windows slide over the appointments' own dates (a history replayed from a GP
record finds the pattern it contains).  A Flag resolves when its evidence no
longer qualifies (a no-show corrected) or when it is reviewed — no open review or
enquiry Task — and its newest evidence is older than the window.  Evidence
already covered by a resolved Flag does not raise a new one on its own.

R2: raising the Flag creates a "review missed appointments" Task for the lead
professional (copy to the GP practice) or the GP practice.  R5: each further WNB
of a flagged child creates an enquiry Task; a reason the carer gave is recorded
on it, never completing it.
"""

from __future__ import annotations

from gateway import codes
from gateway.rules import flags as flag_writer
from gateway.rules import tasks as task_writer
from gateway.rules.context import Evaluation
from gateway.rules.facts import Appt, add_months
from gateway.rules.flags import FlagSpec
from gateway.rules.tasks import TaskSpec
from gateway.rules.wording import appointments_summary, markers_phrase

R1 = "R1-was-not-brought"
DNE = "R1-disguised-non-engagement"


def counted(ev: Evaluation, appts: list[Appt]) -> list[Appt]:
    return [a for a in appts if a.child_at_date and a.start is not None
            and not ev.cfg.service_setting(a.service_key, "ignore", False)]


def qualifying(ev: Evaluation, appts: list[Appt], threshold: int, months: int) -> list[Appt]:
    """Appointments in any window of ``months`` holding ``threshold`` or more (or a
    service's own wnb_threshold at that service)."""
    chosen: dict[str, Appt] = {}
    for i, last in enumerate(appts):
        low = add_months(last.start, -months)
        window = [a for a in appts[:i + 1] if a.start > low]
        if threshold > 0 and len(window) >= threshold:
            chosen.update((a.id, a) for a in window)
        own = ev.cfg.service_setting(last.service_key, "wnb_threshold", None)
        if own:
            same = [a for a in window if a.service_key == last.service_key]
            if len(same) >= own:
                chosen.update((a.id, a) for a in same)
    return sorted(chosen.values(), key=lambda a: (a.start, a.id))


def _covered(ev: Evaluation, rule_id: str) -> set[str]:
    """Evidence of this rule's resolved Flags (already reviewed)."""
    return {ref for f in ev.record.rule_flags(rule_id) if f.get("status") != "active"
            for ref in flag_writer.evidence_refs(f)}


def _open_followups(ev: Evaluation, flag: dict, evidence: list[Appt]) -> bool:
    focus = {f"Flag/{flag['id']}"} | {a.ref for a in evidence}
    for task in ev.record.tasks:
        if (task.get("focus") or {}).get("reference") in focus and task.get("status") in task_writer.OPEN_STATUSES \
                and task_writer.task_code(task) in task_writer.NEEDS_OUTCOME:
            return True
    return False


def _decide(ev: Evaluation, rule_id: str, evidence: list[Appt], months: int) -> str:
    """'raise' | 'keep' | 'resolve' | 'none' for this rule's Flag given its qualifying evidence."""
    current = flag_writer.open_flag(ev.record, rule_id)
    if current is None:
        if not evidence or not ({a.ref for a in evidence} - _covered(ev, rule_id)):
            return "none"
        return "raise"
    if not evidence:
        return "resolve"
    aged_out = evidence[-1].start <= add_months(ev.now, -months)
    if aged_out and not _open_followups(ev, current, evidence):
        return "resolve"
    return "keep"


def escalation_sentence(level: int) -> str:
    if level <= 0:
        return ""
    return (f" Escalated (level {level}): no follow-up — no new booking with the same service and no "
            "completed enquiry or review — within the drift period.")


def evaluate_wnb(ev: Evaluation, level: int | None = None) -> flag_writer.FlagResult:
    rule = ev.cfg.rule(R1)
    wnbs = counted(ev, [a for a in ev.record.appointments if a.status in ev.cfg.wnb_statuses])
    markers = [m for m in rule["markers"] if m in ev.record.active_markers()]
    threshold = rule["marked_threshold"] if markers else rule["threshold"]
    evidence = qualifying(ev, wnbs, threshold, rule["window_months"])
    decision = _decide(ev, R1, evidence, rule["window_months"])
    if decision in ("none", "resolve"):
        result = flag_writer.reconcile(ev.uow, ev.record, rule, None, ev.stamp)
        ev.note(R1, result.action, result.ref)
        return result
    current = flag_writer.open_flag(ev.record, R1)
    shown_level = max(level or 0, flag_writer.escalation_level(current) if current else 0)
    text = appointments_summary(evidence, "not brought to")
    if markers:
        text += "; " + markers_phrase(markers)
    text += "." + escalation_sentence(shown_level)
    spec = FlagSpec(rule, codes.FLAG_WNB, text, [(a.ref, f"Not brought: {a.service_label}, {a.day}") for a in evidence],
                    rule["base_priority"])
    result = flag_writer.reconcile(ev.uow, ev.record, rule, spec, ev.stamp, level=level)
    ev.note(R1, result.action, result.ref)
    liaison(ev, result, evidence, text, escalated=level is not None and result.action == "updated")
    if result.action != "raised":
        enquiries(ev, result, evidence)
    return result


def evaluate_dne(ev: Evaluation) -> flag_writer.FlagResult:
    rule = ev.cfg.rule(DNE)
    cancelled = counted(ev, [a for a in ev.record.appointments if a.patient_cancelled])
    evidence = qualifying(ev, cancelled, rule["threshold"], rule["window_months"])
    decision = _decide(ev, DNE, evidence, rule["window_months"])
    spec = None
    if decision not in ("none", "resolve"):
        text = (appointments_summary(evidence, "cancelled by the parent or carer") +
                ". Repeated cancellations can be disguised non-engagement: check the child is being seen.")
        spec = FlagSpec(rule, codes.FLAG_DISGUISED_NON_ENGAGEMENT, text,
                        [(a.ref, f"Cancelled by parent/carer: {a.service_label}, {a.day}") for a in evidence],
                        rule["base_priority"])
    result = flag_writer.reconcile(ev.uow, ev.record, rule, spec, ev.stamp)
    ev.note(DNE, result.action, result.ref)
    if spec is not None:
        liaison(ev, result, evidence, spec.text)
    return result


def liaison(ev: Evaluation, result: flag_writer.FlagResult, evidence: list[Appt], text: str,
            *, escalated: bool = False) -> None:
    """R2: a review Task for the lead professional (GP copy) or the GP practice.
    Created when the Flag is raised or escalated (an open one is then updated, not duplicated)."""
    if result.flag is None:
        return
    rule = ev.cfg.rule("R2-liaison")
    owner, copy_to = task_writer.route(ev.record)
    if not rule["copy_to_gp"]:
        copy_to = ""
    level = flag_writer.escalation_level(result.flag)
    priority = "routine" if level == 0 else ("urgent" if level == 1 else "asap")
    note = f"Raised by rule {rule.tag} for Flag/{result.flag['id']}."
    if not owner:
        note += " No registered GP practice or lead professional is known for this child: assign an owner."
    spec = TaskSpec(rule, codes.TASK_REVIEW_MISSED,
                    f"Review this child's missed appointments and decide what follow-up is needed. {text}",
                    f"Flag/{result.flag['id']}", owner,
                    [(a.ref, f"{a.service_label}, {a.day} ({a.status})") for a in evidence], priority=priority,
                    note=note)
    if result.action == "raised" or escalated:
        main = task_writer.ensure_with_copy(ev.uow, ev.record, spec, copy_to, ev.stamp, reopen_closed=escalated)
        ev.note("R2-liaison", "task", f"Task/{main['id']}" if main else "")
    # Otherwise the review Task keeps the evidence it was raised with: each later WNB
    # gets its own enquiry Task (R5), which is cheaper than rewriting the review each time.


def enquiries(ev: Evaluation, result: flag_writer.FlagResult, evidence: list[Appt]) -> None:
    """R5: an enquiry Task for each WNB added to an already-open Flag; carer reasons recorded."""
    if result.flag is None or result.previous is None:
        return
    rule = ev.cfg.rule("R5-wnb-enquiry")
    before = set(flag_writer.evidence_refs(result.previous))
    owner, _copy = task_writer.route(ev.record)
    for appt in evidence:
        if appt.status not in ev.cfg.wnb_statuses:
            continue
        known = task_writer.find(ev.record, codes.TASK_WNB_ENQUIRY, appt.ref)
        if appt.ref in before and not known:
            continue
        if known:
            owner_of = (known[0].get("owner") or {}).get("reference", "")
        else:
            owner_of = owner
        spec = TaskSpec(rule, codes.TASK_WNB_ENQUIRY,
                        f"The child was not brought to {appt.service_label} on {appt.day}. Find out why from the family "
                        "and the professionals involved, beyond the parent's or carer's own account, and record "
                        "the outcome.", appt.ref, owner_of, [(appt.ref, f"{appt.service_label}, {appt.day}")],
                        carer_reason=appt.carer_reason, priority="urgent",
                        note=f"Raised by rule {rule.tag} for Flag/{result.flag['id']}.")
        action, task = task_writer.ensure(ev.uow, ev.record, spec, ev.stamp)
        ev.note("R5-wnb-enquiry", action, f"Task/{task['id']}" if task else "")
