"""FHIR R4 REST routes: capabilities, read, vread (search is in search_routes.py).

Reads run on a worker thread (FastAPI runs plain ``def`` routes in its threadpool)
over a short read-only unit of work.  Writes through the API are the FHIR API
issue's; the read side here is what a GP system needs to see the feed's result.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.capability import capability_statement
from gateway.api.common import base_url, check_format, check_type, engine_of, versioned_headers, wants_pretty
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.store.unit_of_work import loads
from gateway.store.reading import read_only

router = APIRouter(prefix="/fhir")


@router.get("/metadata")
def metadata(request: Request) -> Response:
    check_format(request)
    return FhirResponse(capability_statement(base_url(request)), pretty=wants_pretty(request))


@router.get("/{resource_type}/{res_id}")
def read(resource_type: str, res_id: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    with read_only(engine_of(request)) as uow:
        stored = uow.get(resource_type, res_id)
    if stored is None:
        raise FhirError(404, f"{resource_type}/{res_id} is not known", code="not-found")
    if stored.deleted:
        raise FhirError(410, f"{resource_type}/{res_id} was deleted (version {stored.version_id})",
                        code="deleted")
    return FhirResponse(stored.resource, headers=versioned_headers(stored.resource), pretty=wants_pretty(request))


@router.get("/{resource_type}/{res_id}/_history/{version_id}")
def vread(resource_type: str, res_id: str, version_id: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    if not version_id.isdigit():
        raise FhirError(400, f"version id '{version_id}' must be a whole number")
    with read_only(engine_of(request)) as uow:
        row = uow.fetchone("SELECT deleted, content FROM resource_versions WHERE res_type=? AND res_id=? "
                           "AND version_id=?", (resource_type, res_id, int(version_id)))
    if row is None:
        raise FhirError(404, f"{resource_type}/{res_id}/_history/{version_id} is not known", code="not-found")
    if row[0]:
        raise FhirError(410, f"{resource_type}/{res_id} version {version_id} is a deletion", code="deleted")
    resource = loads(row[1])
    return FhirResponse(resource, headers=versioned_headers(resource), pretty=wants_pretty(request))
