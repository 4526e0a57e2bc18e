"""``POST /fhir/$import-gp-record``: one GP record (a Bundle) into the joined-up record.

Body: the record itself — a FHIR R4 ``collection``, ``document``, ``searchset``,
``transaction`` or ``batch`` Bundle, or a GP Connect STU3 structured-record Bundle
(the version is detected; ``?fhirVersion=3.0`` or a ``fhirVersion`` MIME parameter
declares it) — or a Parameters resource with ``record`` (the Bundle), optional
``source`` (valueUri) and ``fhirVersion`` (valueCode).

All or nothing (gprecords/importer.py): 200 with a Parameters summary (counts,
the patient match report, an ``outcome`` OperationOutcome) when it was stored;
422 with an OperationOutcome naming every bad entry when nothing was; 400 when the
body is not a Bundle or is a FHIR version the gateway does not read.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from gateway.api.common import engine_of
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.api.validation import check_content_type, parse_json_object
from gateway.gprecords.detect import ImportFormatError
from gateway.gprecords.importer import Importer

router = APIRouter()


def _declared_version(request: Request) -> str | None:
    for part in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "fhirversion" and value:
            return value.strip('"')
    return request.query_params.get("fhirVersion") or None


def _unwrap(body: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
    if body.get("resourceType") != "Parameters":
        return body, None, None
    record = source = version = None
    for param in body.get("parameter") or ():
        name = param.get("name")
        if name == "record":
            record = param.get("resource")
        elif name == "source":
            source = param.get("valueUri") or param.get("valueString")
        elif name == "fhirVersion":
            version = param.get("valueCode") or param.get("valueString")
    if not isinstance(record, dict):
        raise FhirError(400, "Parameters needs a 'record' parameter holding the GP record Bundle",
                        expression=["Parameters.parameter"])
    return record, source, version


@router.post("/fhir/$import-gp-record")
async def import_gp_record_route(request: Request) -> FhirResponse:
    check_content_type(request.headers.get("content-type"))
    body = parse_json_object(await request.body())
    record, source, version = _unwrap(body)
    source = source or request.query_params.get("source") or None
    version = version or _declared_version(request)
    engine = engine_of(request)

    def run() -> Any:
        with Importer(engine, source=source, fhir_version=version) as importer:
            return importer.import_bundle(record, name="record")

    try:
        report = await run_in_threadpool(run)
    except ImportFormatError as exc:
        raise FhirError(400, str(exc), code="not-supported") from None
    if report.rejected:
        return FhirResponse(report.outcome(), status_code=422)
    return FhirResponse(report.parameters(), status_code=200)
