"""FHIR R4 RESTful interactions (search is in search_routes.py).

    GET    /fhir/metadata                          capabilities
    POST   /fhir                                   transaction | batch Bundle
    GET    /fhir/_history                          history-system
    GET    /fhir/{type}/_history                   history-type
    POST   /fhir/{type}                            create (If-None-Exist: conditional create)
    PUT    /fhir/{type}?criteria                   conditional update
    DELETE /fhir/{type}?criteria                   conditional delete
    GET    /fhir/{type}/{id}                       read
    PUT    /fhir/{type}/{id}                       update (update-as-create; If-Match)
    DELETE /fhir/{type}/{id}                       delete (If-Match)
    GET    /fhir/{type}/{id}/_history              history-instance
    GET    /fhir/{type}/{id}/_history/{vid}        vread

Literal paths (``_history``) are registered before ``{id}`` ones, and this router is
mounted before search_routes, so ``/fhir/_history`` is never taken for a search.

Reads run on a worker thread over a short read-only unit of work.  Writes read the
body on the event loop, then run on a worker thread through the write service
(``writes.py``): one unit of work per request, outbox events in the same commit.
The choices made where R4 leaves one are in docs/api.md.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.api import writes
from gateway.api.capability import capability_statement
from gateway.api.common import (base_url, check_format, check_type, engine_of, information, prefer_return,
                                run_read, version_location, versioned_headers, wants_pretty)
from gateway.api.errors import FhirError
from gateway.api.history import history_bundle
from gateway.api.responses import FhirResponse
from gateway.api.transaction import process_bundle
from gateway.api.validation import check_content_type, parse_json_object
from gateway.store.reading import read_only
from gateway.store.unit_of_work import UnitOfWork, loads

router = APIRouter(prefix="/fhir")

_SHAPING = ("_format", "_pretty")


@router.get("/metadata")
def metadata(request: Request) -> Response:
    check_format(request)
    return FhirResponse(capability_statement(base_url(request)), pretty=wants_pretty(request))


# --- system level -------------------------------------------------------------------------
@router.post("")
@router.post("/")  # fhirpy and fhirclient post Bundles to "{base}/": answer, don't redirect
async def transaction_or_batch(request: Request) -> Response:
    check_format(request)
    check_content_type(request.headers.get("content-type"))
    bundle = parse_json_object(await request.body())
    base, prefer = base_url(request), prefer_return(request)
    result = await run_in_threadpool(process_bundle, engine_of(request), base, bundle, prefer=prefer)
    return FhirResponse(result, pretty=wants_pretty(request))


@router.get("/_history")
def history_system(request: Request) -> Response:
    check_format(request)
    with read_only(engine_of(request)) as uow:
        bundle = history_bundle(uow, base_url(request), "_history", list(request.query_params.multi_items()))
    return FhirResponse(bundle, pretty=wants_pretty(request))


# --- type level ---------------------------------------------------------------------------
@router.get("/{resource_type}/_history")
def history_type(resource_type: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    with read_only(engine_of(request)) as uow:
        bundle = history_bundle(uow, base_url(request), f"{resource_type}/_history",
                                list(request.query_params.multi_items()), res_type=resource_type)
    return FhirResponse(bundle, pretty=wants_pretty(request))


@router.post("/{resource_type}")
async def create(resource_type: str, request: Request) -> Response:
    resource = await _body(resource_type, request)
    if_none_exist = request.headers.get("if-none-exist")
    if not if_none_exist:
        # fhirpy's get_or_create (and Aidbox) put the If-None-Exist criteria in the
        # query string; read them the same way rather than ignore them.
        criteria = [(k, v) for k, v in request.query_params.multi_items() if k not in _SHAPING]
        if criteria:
            if_none_exist = urlencode(criteria)
    return await _write(request, lambda uow: writes.create(uow, resource_type, resource,
                                                           if_none_exist=if_none_exist))


@router.put("/{resource_type}")
async def conditional_update(resource_type: str, request: Request) -> Response:
    resource = await _body(resource_type, request)
    criteria = _criteria(request)
    if_match = writes.parse_if_match(request.headers.get("if-match"))
    return await _write(request, lambda uow: writes.conditional_update(uow, resource_type, criteria, resource,
                                                                       if_match=if_match))


@router.delete("/{resource_type}")
async def conditional_delete(resource_type: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    criteria = _criteria(request)
    return await _write(request, lambda uow: writes.conditional_delete(uow, resource_type, criteria))


# --- instance level -----------------------------------------------------------------------
@router.get("/{resource_type}/{res_id}")
async def read(resource_type: str, res_id: str, request: Request) -> Response:
    return await run_read(request, _read, resource_type, res_id, request)


def _read(resource_type: str, res_id: str, request: Request) -> Response:
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


@router.put("/{resource_type}/{res_id}")
async def update(resource_type: str, res_id: str, request: Request) -> Response:
    resource = await _body(resource_type, request)
    if_match = writes.parse_if_match(request.headers.get("if-match"))
    return await _write(request, lambda uow: writes.update(uow, resource_type, res_id, resource,
                                                           if_match=if_match))


@router.delete("/{resource_type}/{res_id}")
async def delete(resource_type: str, res_id: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    if_match = writes.parse_if_match(request.headers.get("if-match"))
    return await _write(request, lambda uow: writes.delete(uow, resource_type, res_id, if_match=if_match))


@router.get("/{resource_type}/{res_id}/_history")
def history_instance(resource_type: str, res_id: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    with read_only(engine_of(request)) as uow:
        bundle = history_bundle(uow, base_url(request), f"{resource_type}/{res_id}/_history",
                                list(request.query_params.multi_items()), res_type=resource_type, res_id=res_id)
    return FhirResponse(bundle, pretty=wants_pretty(request))


@router.get("/{resource_type}/{res_id}/_history/{version_id}")
async def vread(resource_type: str, res_id: str, version_id: str, request: Request) -> Response:
    return await run_read(request, _vread, resource_type, res_id, version_id, request)


def _vread(resource_type: str, res_id: str, version_id: str, request: Request) -> Response:
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


# --- helpers ------------------------------------------------------------------------------
async def _body(resource_type: str, request: Request) -> dict[str, Any]:
    """The checks every write shares, in the order a client can act on them."""
    check_format(request)
    check_type(resource_type)
    check_content_type(request.headers.get("content-type"))
    return parse_json_object(await request.body())


def _criteria(request: Request) -> list[tuple[str, str]]:
    criteria = [(k, v) for k, v in request.query_params.multi_items() if k not in _SHAPING]
    if not criteria:
        raise FhirError(400, f"{request.method} on a type needs search criteria (a conditional "
                             f"{'update' if request.method == 'PUT' else 'delete'}); "
                             f"use {request.method} {request.url.path}/{{id}} for one resource",
                        code="invalid")
    return criteria


async def _write(request: Request, action: Callable[[UnitOfWork], writes.WriteOutcome]) -> Response:
    engine = engine_of(request)

    def run() -> writes.WriteOutcome:
        with writes.write_transaction(engine) as uow:
            return action(uow)

    outcome = await run_in_threadpool(run)
    return write_response(request, outcome)


def write_response(request: Request, outcome: writes.WriteOutcome) -> Response:
    """Status, ETag, Last-Modified and Location, and the body Prefer asks for."""
    prefer = prefer_return(request)
    stored = outcome.stored
    if outcome.status == 204:  # delete
        headers = {"ETag": f'W/"{stored.version_id}"'} if stored is not None else {}
        if prefer == "OperationOutcome":
            return FhirResponse(information(outcome.message), status_code=200, headers=headers)
        return Response(status_code=204, headers=headers)
    headers = versioned_headers(stored.resource)
    headers["Location"] = version_location(base_url(request), stored.resource)
    if prefer == "minimal":
        return FhirResponse(None, status_code=outcome.status, headers=headers)
    if prefer == "OperationOutcome":
        return FhirResponse(information(outcome.message), status_code=outcome.status, headers=headers)
    return FhirResponse(stored.resource, status_code=outcome.status, headers=headers,
                        pretty=wants_pretty(request))
