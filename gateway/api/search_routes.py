"""FHIR search routes: ``GET /fhir/{type}``, ``POST /fhir/{type}/_search`` and
``Patient/{id}/$everything`` (GET and POST).

Routes are plain ``def`` (FastAPI runs them on its threadpool) over a short
read-only unit of work.  ``GET /bench/static`` — a fixed JSON answer, the
ceiling the search benchmark compares against — exists only when
``GATEWAY_BENCH_ENDPOINTS=1``.
"""

from __future__ import annotations

import os
from typing import Callable
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import base_url, check_format, check_type, engine_of, run_read, wants_pretty
from gateway.api.errors import FhirError
from gateway.api.everything import PatientGone, everything
from gateway.api.responses import FhirResponse
from gateway.api.searchset import searchset
from gateway.store.reading import read_only
from gateway.store.search import SearchError, SearchResult, search
from gateway.store.unit_of_work import UnitOfWork

router = APIRouter()

_FORM = "application/x-www-form-urlencoded"


def _lenient(request: Request) -> bool:
    return "handling=lenient" in request.headers.get("prefer", "").replace(" ", "").lower()


async def _form_params(request: Request) -> list[tuple[str, str]]:
    """Body parameters of a POST search (form-encoded), after the URL's own."""
    body = await request.body()
    ctype = request.headers.get("content-type", "")
    if body and "json" in ctype:
        return _parameters(body)
    if body and not ctype.startswith(_FORM):
        raise FhirError(415, f"POST search takes {_FORM}, not '{ctype}'")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True) if body else []
    except UnicodeDecodeError:
        raise FhirError(400, "the form body is not UTF-8") from None


def _parameters(body: bytes) -> list[tuple[str, str]]:
    """A FHIR Parameters body (how $everything is often POSTed): name -> value[x]."""
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirError(400, "the body is not valid JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise FhirError(400, "a JSON body here must be a Parameters resource")
    out = []
    for item in resource.get("parameter") or ():
        value = next((v for k, v in item.items() if k.startswith("value")), None)
        if isinstance(item.get("name"), str) and value is not None:
            out.append((item["name"], str(value).lower() if isinstance(value, bool) else str(value)))
    return out


def _searchset_response(request: Request, path: str, query: list[tuple[str, str]],
                        run: Callable[[UnitOfWork], SearchResult]) -> Response:
    """Run one search-like read and answer with its searchset Bundle (errors as
    OperationOutcomes)."""
    check_format(request)
    try:
        with read_only(engine_of(request)) as uow:
            result = run(uow)
    except SearchError as exc:
        raise FhirError(400, str(exc), code="invalid", expression=[exc.param] if exc.param else None) from None
    except PatientGone as exc:
        raise FhirError(exc.status, str(exc)) from None
    cursor = next((v for k, v in query if k == "_cursor"), None)
    return FhirResponse(searchset(result, base_url(request), path, cursor), pretty=wants_pretty(request))


def _search_response(request: Request, resource_type: str, query: list[tuple[str, str]]) -> Response:
    check_type(resource_type)
    lenient = _lenient(request)
    return _searchset_response(request, resource_type, query,
                               lambda uow: search(uow, resource_type, query, lenient=lenient))


@router.get("/fhir/{resource_type}")
async def search_type(resource_type: str, request: Request) -> Response:
    return await run_read(request, _search_response, request, resource_type,
                          list(request.query_params.multi_items()))


@router.post("/fhir/{resource_type}/_search")
async def search_type_post(resource_type: str, request: Request) -> Response:
    query = list(request.query_params.multi_items()) + await _form_params(request)
    return await run_read(request, _search_response, request, resource_type, query)


def _everything_response(request: Request, patient_id: str, query: list[tuple[str, str]]) -> Response:
    lenient = _lenient(request)
    return _searchset_response(request, f"Patient/{patient_id}/$everything", query,
                               lambda uow: everything(uow, patient_id, query, lenient=lenient))


@router.get("/fhir/Patient/{patient_id}/$everything")
async def patient_everything(patient_id: str, request: Request) -> Response:
    return await run_read(request, _everything_response, request, patient_id,
                          list(request.query_params.multi_items()))


@router.post("/fhir/Patient/{patient_id}/$everything")
async def patient_everything_post(patient_id: str, request: Request) -> Response:
    query = list(request.query_params.multi_items()) + await _form_params(request)
    return await run_read(request, _everything_response, request, patient_id, query)


if os.environ.get("GATEWAY_BENCH_ENDPOINTS") == "1":
    _STATIC = FhirResponse({"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}).body

    @router.get("/bench/static")
    async def bench_static() -> Response:
        """The ceiling for bench/search.py: the framework alone (an async route
        answering fixed FHIR JSON), no database work."""
        return Response(_STATIC, media_type="application/fhir+json")
