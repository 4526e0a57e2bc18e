"""The care plan in writing (Theme 3 rec. 2): ``CarePlan.text`` generated from the
plan, its CareTeam and the parties' own records, on every write.

It says, in this order: whose plan it is, the lead professional and how to reach
them, the goals, who does what (activities and performers, with a commissioned
service's liaison and communication duties), every party with their role and
contact details, how information is exchanged, and the review date.  FHIR
narrative XHTML: one ``<div xmlns="http://www.w3.org/1999/xhtml">``, no scripts,
no styles (the printable page, document.py, adds those).
"""

from __future__ import annotations

from html import escape
from typing import Any

from gateway import codes
from gateway.careplans import parties as P
from gateway.store.unit_of_work import UnitOfWork

XHTML = "http://www.w3.org/1999/xhtml"


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def concept_text(concept: dict[str, Any] | None) -> str:
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or ():
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return ""


def _ext_text(resource: dict[str, Any], url: str) -> str:
    for ext in resource.get("extension") or ():
        if ext.get("url") == url:
            return str(ext.get("valueMarkdown") or ext.get("valueString") or ext.get("valueDate") or "")
    return ""


def review_date(plan: dict[str, Any]) -> str:
    return _ext_text(plan, codes.EXT_REVIEW_DATE)


def goals(uow: UnitOfWork, plan: dict[str, Any]) -> list[str]:
    out = []
    for ref in plan.get("goal") or ():
        goal = P.resolve(uow, ref, plan)
        text = concept_text((goal or {}).get("description")) or ref.get("display") or ""
        if text:
            out.append(text)
    return out


def activity_rows(uow: UnitOfWork, plan: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for activity in plan.get("activity") or ():
        detail = activity.get("detail") or {}
        what = (detail.get("description") or concept_text(detail.get("code"))
                or (activity.get("reference") or {}).get("display") or concept_text(
                    (activity.get("outcomeCodeableConcept") or [None])[0]) or "activity")
        who = ", ".join(P.display_of(uow, r, plan) for r in detail.get("performer") or ()) or "not assigned"
        when = detail.get("scheduledString") or _period_text(detail.get("scheduledPeriod")) or ""
        duties = next((e for e in activity.get("extension") or () if e.get("url") == codes.EXT_COMMISSIONED_DUTIES),
                      None)
        sub = {s.get("url"): s.get("valueMarkdown") or s.get("valueString") or ""
               for s in (duties or {}).get("extension") or ()}
        rows.append({"what": what, "who": who, "status": detail.get("status", ""), "when": when,
                     "liaison": sub.get("liaison", ""), "communication": sub.get("communication", "")})
    return rows


def _period_text(period: dict[str, Any] | None) -> str:
    if not period:
        return ""
    return " to ".join(p for p in (period.get("start", ""), period.get("end", "")) if p)


def plan_parties(uow: UnitOfWork, plan: dict[str, Any]) -> list[P.Party]:
    out: list[P.Party] = []
    for ref in plan.get("careTeam") or ():
        team = P.resolve(uow, ref, plan)
        if team is not None:
            out += P.parties(uow, team)
    return out


def render_narrative(uow: UnitOfWork, plan: dict[str, Any]) -> str:
    patient = P.resolve(uow, plan.get("subject"))
    child = P.human_name((patient or {}).get("name")) or (plan.get("subject") or {}).get("display", "the child")
    nhs = next((i.get("value") for i in (patient or {}).get("identifier") or () if i.get("system") == codes.NHS_NUMBER),
               "")
    everyone = plan_parties(uow, plan)
    lead = next((p for p in everyone if p.lead), None)
    h: list[str] = [f'<div xmlns="{XHTML}">']
    title = plan.get("title") or "Integrated care plan"
    h.append(f"<h2>{_e(title)} for {_e(child)}{f' (NHS number {_e(nhs)})' if nhs else ''}</h2>")
    h.append(f"<p>Status: <b>{_e(plan.get('status', ''))}</b>"
             + (f"; period: {_e(_period_text(plan.get('period')))}" if plan.get("period") else "")
             + f"; review date: <b>{_e(review_date(plan) or 'not set')}</b></p>")
    if plan.get("description"):
        h.append(f"<p>{_e(plan['description'])}</p>")
    h.append("<h3>Lead professional</h3>")
    if lead is not None:
        h.append(f"<p><b>{_e(lead.name)}</b>{f' ({_e(lead.on_behalf_of)})' if lead.on_behalf_of else ''} leads this "
                 f"plan. Contact: {_e('; '.join(lead.contact) or 'none recorded')}</p>")
    else:
        h.append("<p><b>No lead professional is named.</b></p>")
    h.append("<h3>Goals</h3>")
    goal_list = goals(uow, plan)
    h.append("<ul>" + "".join(f"<li>{_e(g)}</li>" for g in goal_list) + "</ul>" if goal_list
             else "<p>No goals recorded.</p>")
    h.append("<h3>Who does what</h3>")
    rows = activity_rows(uow, plan)
    if rows:
        h.append("<table><tr><th>Activity</th><th>Who</th><th>Status</th><th>When</th>"
                 "<th>Liaison and communication duties</th></tr>")
        for r in rows:
            duties = "; ".join(x for x in (f"Liaison: {r['liaison']}" if r["liaison"] else "",
                                           f"Communication: {r['communication']}" if r["communication"] else "") if x)
            h.append(f"<tr><td>{_e(r['what'])}</td><td>{_e(r['who'])}</td><td>{_e(r['status'])}</td>"
                     f"<td>{_e(r['when'])}</td><td>{_e(duties)}</td></tr>")
        h.append("</table>")
    else:
        h.append("<p>No activities recorded.</p>")
    h.append("<h3>Parties and how to reach them</h3>")
    if everyone:
        h.append("<table><tr><th>Party</th><th>Role in this plan</th><th>How to reach them</th></tr>")
        for p in everyone:
            name = p.name + (f" ({p.on_behalf_of})" if p.on_behalf_of else "")
            h.append(f"<tr><td>{_e(name)}</td><td>{_e(p.roles)}</td>"
                     f"<td>{_e('; '.join(p.contact) or 'none recorded')}</td></tr>")
        h.append("</table>")
    if not any(P.has_role(p.participant, codes.ROLE_REGISTERED_GP) for p in everyone):
        h.append("<p><b>No registered GP practice is recorded for this child.</b></p>")
    h.append("<h3>How information is exchanged</h3>")
    exchange = _ext_text(plan, codes.EXT_INFORMATION_EXCHANGE)
    h.append(f"<p>{_e(exchange) if exchange else '<b>Not stated.</b>'}</p>")
    h.append(f"<h3>Review</h3><p>This plan is to be reviewed by <b>{_e(review_date(plan) or 'a date not yet set')}"
             f"</b>.</p>")
    h.append("</div>")
    return "".join(h)
