"""R8 (issue 6, Theme 2 rec. 2.2): complex needs and several services => an integrated care plan.

A child with an active complex-needs marker and ``min_services`` (2) or more
services involved in the last ``window_months`` (12) — appointments of any status
but entered-in-error (future bookings included) and ServiceRequests — and no
active CarePlan gets a "no integrated care plan" Flag and a Task for the GP
practice.  When an active CarePlan exists the Flag resolves and the rules
complete their Task with the plan as its output.
"""

from __future__ import annotations

from gateway import codes
from gateway.rules import flags as flag_writer
from gateway.rules import tasks as task_writer
from gateway.rules.context import Evaluation
from gateway.rules.facts import add_months, concept_label, is_child_on, parse_date, parse_instant
from gateway.rules.flags import FlagSpec
from gateway.rules.tasks import TaskSpec
from gateway.rules.wording import join, markers_phrase, plural

R8 = "R8-no-integrated-care-plan"


def services_involved(ev: Evaluation) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """service key -> (label, evidence) over the window."""
    rule = ev.cfg.rule(R8)
    since = add_months(ev.now, -rule["window_months"])
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    for appt in ev.record.appointments:
        if appt.status == "entered-in-error" or appt.start is None or appt.start < since:
            continue
        if ev.cfg.service_setting(appt.service_key, "ignore", False):
            continue
        found.setdefault(appt.service_key, (appt.service_label, []))[1].append(
            (appt.ref, f"{appt.service_label}, {appt.day} ({appt.status})"))
    for request in ev.record.service_requests:
        if request.get("status") in ("entered-in-error", "draft"):
            continue
        when = parse_instant(request.get("authoredOn")) or parse_instant((request.get("meta") or {}).get("lastUpdated"))
        if when is not None and when < since:
            continue
        performer = next((p for p in request.get("performer") or () if p.get("display")), {})
        label = concept_label(request.get("performerType")) or performer.get("display", "") \
            or concept_label(request.get("code"))
        if not label:
            continue
        key = ev.cfg.canonical_service(label)
        found.setdefault(key, (key, []))[1].append((f"ServiceRequest/{request['id']}", f"referral: {key}"))
    return found


def evaluate(ev: Evaluation) -> flag_writer.FlagResult:
    rule = ev.cfg.rule(R8)
    markers = [m for m in rule["markers"] if m in ev.record.active_markers()]
    spec = None
    services = {}
    if markers and not ev.record.has_active_care_plan() and \
            is_child_on(parse_date(ev.record.patient.get("birthDate")), ev.now, ev.cfg.child_age_under):
        services = services_involved(ev)
        if len(services) >= rule["min_services"]:
            labels = sorted(label for label, _e in services.values())
            text = (f"{markers_phrase(markers).capitalize()} and {plural(len(labels), 'service')} involved in the "
                    f"last {rule['window_months']} months ({join(labels)}), but no active integrated care plan "
                    "names a lead professional and how the services work together.")
            evidence = [e for _l, items in sorted(services.values()) for e in items]
            spec = FlagSpec(rule, codes.FLAG_NO_CARE_PLAN, text, evidence, rule["base_priority"])
    result = flag_writer.reconcile(ev.uow, ev.record, rule, spec, ev.stamp)
    ev.note(R8, result.action, result.ref)
    if spec is not None and result.flag is not None:
        task = TaskSpec(rule, codes.TASK_CREATE_CARE_PLAN,
                        "Agree an integrated care plan for this child with the services involved: name the lead "
                        "professional, each party's role and how they reach each other, and share it in writing. "
                        + spec.text, f"Flag/{result.flag['id']}", ev.record.gp_ref(),
                        [(ref, disp) for ref, disp in spec.evidence], note=f"Raised by rule {rule.tag}.")
        action, written = task_writer.ensure(ev.uow, ev.record, task, ev.stamp)
        ev.note(R8, action, f"Task/{written['id']}" if written else "")
    elif result.action == "resolved" and result.flag is not None:
        _close_tasks(ev, result.flag)
    return result


def _close_tasks(ev: Evaluation, flag: dict) -> None:
    """The plan exists (or the condition went): the rules close their own Task, saying why."""
    plan = next((p for p in ev.record.care_plans if p.get("status") == "active"), None)
    for task in task_writer.find(ev.record, codes.TASK_CREATE_CARE_PLAN, f"Flag/{flag['id']}",
                                 statuses=task_writer.OPEN_STATUSES):
        body = {k: v for k, v in task.items() if k != "meta"}
        if plan is not None:
            body["status"] = "completed"
            body["output"] = [{"type": task_writer.type_concept(codes.TASK_OUTPUT_OUTCOME),
                               "valueReference": {"reference": f"CarePlan/{plan['id']}"}}]
        else:
            body["status"] = "cancelled"
            body["statusReason"] = {"text": "The condition no longer holds (no complex-needs marker, or fewer "
                                            "services involved)."}
        body["lastModified"] = ev.stamp
        stored = ev.uow.update("Task", task["id"], body)
        ev.record.tasks[:] = [stored.resource if t.get("id") == task["id"] else t for t in ev.record.tasks]
        ev.note(R8, "task-" + body["status"], f"Task/{task['id']}")
