"""``GET /fhir/CarePlan/{id}/$document``: the care plan as a printable HTML page
(gateway/careplans/document.py).  404 for an unknown plan, 410 for a deleted one,
both as OperationOutcomes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from gateway.api.common import engine_of, run_read
from gateway.api.errors import FhirError
from gateway.careplans.document import render_document
from gateway.store.reading import read_only

router = APIRouter()


@router.get("/fhir/CarePlan/{plan_id}/$document")
async def careplan_document(request: Request, plan_id: str) -> HTMLResponse:
    engine = engine_of(request)

    def build() -> str:
        with read_only(engine) as uow:
            stored = uow.get("CarePlan", plan_id)
            if stored is None:
                raise FhirError(404, f"CarePlan/{plan_id} is not known", code="not-found")
            if stored.deleted:
                raise FhirError(410, f"CarePlan/{plan_id} was deleted", code="deleted")
            return render_document(uow, stored)

    page = await run_read(request, build)
    return HTMLResponse(page, headers={"Cache-Control": "no-store"})
