"""``GET /fhir/Patient/{id}/$missed-appointments`` (rules R3, rec. 1.3: the GP as the
reference source for the extent of a child's missed appointments).

Every missed (``noshow``) and patient/carer-cancelled appointment of the child
from every source (hospital PAS feeds, community systems, GP records), newest
first, with a per-service count for the 12 months before ``as-of`` — the same
"which service" and "who cancelled" decisions the rules make (gateway/rules/facts.py).
Provider cancellations are not listed.

Answer: a ``Parameters`` resource (docs/rules.md "$missed-appointments"):

    patient            valueReference   the child
    as-of              valueDateTime    the end of the 12-month window (default now)
    window-start       valueDateTime    as-of minus 12 months
    total-missed       valueInteger     all missed, any date
    total-patient-cancelled valueInteger
    service            (one per service with anything in the window, most first)
        part name valueString; missed, patient-cancelled valueInteger (in the window)
    appointment        (one per appointment, newest first)
        part kind valueCode (missed | patient-cancelled); service valueString;
        date valueDateTime; source valueUri (meta.source, the sending system);
        child-at-date valueBoolean; resource (the Appointment)

Parameters: ``as-of`` (dateTime), ``_format``, ``_pretty``; anything else is a 400.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import check_format, engine_of, run_read, wants_pretty
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.rules import config
from gateway.rules.facts import add_months, parse_date, parse_instant, to_appt
from gateway.store.reading import read_only
from gateway.store.unit_of_work import fhir_instant, loads

router = APIRouter()

_ACCEPTED = {"as-of", "_format", "_pretty"}
_SQL = ("SELECT r.content FROM idx_reference x JOIN resources r ON r.res_type = x.res_type AND r.res_id = x.res_id "
        "AND NOT r.deleted WHERE x.res_type = 'Appointment' AND x.param = 'patient' AND x.target_type = 'Patient' "
        "AND x.target_id = ?")


def missed_appointments(engine: Any, patient_id: str, as_of: datetime) -> dict[str, Any]:
    cfg = config.current()
    with read_only(engine) as uow:
        stored = uow.get("Patient", patient_id)
        if stored is None:
            raise FhirError(404, f"Patient/{patient_id} is not known")
        if stored.deleted:
            raise FhirError(410, f"Patient/{patient_id} was deleted")
        birth = parse_date(stored.resource.get("birthDate"))
        appts = [to_appt(loads(row[0]), birth, cfg) for row in uow.fetchall(_SQL, (patient_id,))]
    listed = [a for a in appts if a.status in cfg.wnb_statuses or a.patient_cancelled]
    listed.sort(key=lambda a: (a.start or datetime.min.replace(tzinfo=timezone.utc), a.id), reverse=True)
    since = add_months(as_of, -12)
    per_service: dict[str, dict[str, Any]] = {}
    for a in listed:
        if a.start is None or not (since < a.start <= as_of):
            continue
        counts = per_service.setdefault(a.service_key, {"name": a.service_label, "missed": 0, "patient-cancelled": 0})
        counts["missed" if a.status in cfg.wnb_statuses else "patient-cancelled"] += 1
    params: list[dict[str, Any]] = [
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
        {"name": "as-of", "valueDateTime": fhir_instant(as_of)},
        {"name": "window-start", "valueDateTime": fhir_instant(since)},
        {"name": "total-missed", "valueInteger": sum(1 for a in listed if a.status in cfg.wnb_statuses)},
        {"name": "total-patient-cancelled", "valueInteger": sum(1 for a in listed if a.patient_cancelled)},
    ]
    for counts in sorted(per_service.values(), key=lambda c: (-(c["missed"] + c["patient-cancelled"]), c["name"])):
        params.append({"name": "service", "part": [
            {"name": "name", "valueString": counts["name"]},
            {"name": "missed", "valueInteger": counts["missed"]},
            {"name": "patient-cancelled", "valueInteger": counts["patient-cancelled"]}]})
    for a in listed:
        part: list[dict[str, Any]] = [
            {"name": "kind", "valueCode": "missed" if a.status in cfg.wnb_statuses else "patient-cancelled"},
            {"name": "service", "valueString": a.service_label}]
        if a.resource.get("start"):
            part.append({"name": "date", "valueDateTime": a.resource["start"]})
        if a.source:
            part.append({"name": "source", "valueUri": a.source})
        part.append({"name": "child-at-date", "valueBoolean": a.child_at_date})
        part.append({"name": "resource", "resource": a.resource})
        params.append({"name": "appointment", "part": part})
    return {"resourceType": "Parameters", "parameter": params}


def _respond(request: Request, patient_id: str) -> Response:
    check_format(request)
    as_of = datetime.now(timezone.utc)
    for key, value in request.query_params.multi_items():
        if key not in _ACCEPTED:
            raise FhirError(400, f"unknown parameter '{key}' for $missed-appointments (accepted: as-of)",
                            code="invalid", expression=[key])
        if key == "as-of":
            parsed = parse_instant(value)
            if parsed is None:
                raise FhirError(400, f"as-of '{value}' is not a FHIR dateTime", code="invalid", expression=["as-of"])
            as_of = parsed
    return FhirResponse(missed_appointments(engine_of(request), patient_id, as_of), pretty=wants_pretty(request))


@router.get("/fhir/Patient/{patient_id}/$missed-appointments")
async def patient_missed_appointments(patient_id: str, request: Request) -> Response:
    return await run_read(request, _respond, request, patient_id)
