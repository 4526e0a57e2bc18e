"""FHIR R4 REST routes: capabilities, read, vread, search.

Reads run on a worker thread (FastAPI runs plain ``def`` routes in its threadpool)
over a short read-only unit of work.  Writes through the API are the FHIR API
issue's; the read side here is what a GP system needs to see the feed's result.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.capability import capability_statement
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.store.search import SearchError, search
from gateway.store.search_params import RESOURCE_TYPES
from gateway.store.unit_of_work import loads
from gateway.store.reading import read_only

router = APIRouter(prefix="/fhir")


def _engine(request: Request):  # noqa: ANN202
    return request.app.state.engine


def _base(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/") + "/fhir"


def _pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"


def _check_format(request: Request) -> None:
    fmt = request.query_params.get("_format", "")
    accept = request.headers.get("accept", "")
    wanted = fmt or accept
    if wanted and not any(t in wanted for t in ("json", "*/*", "fhir+json")) and "xml" in wanted:
        raise FhirError(406, "only JSON is served (application/fhir+json); XML is not supported",
                        code="not-supported")


def _check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise FhirError(404, f"resource type '{resource_type}' is not supported here", code="not-supported")


def _versioned_headers(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    if meta.get("lastUpdated"):
        from email.utils import format_datetime
        from datetime import datetime

        moment = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
        headers["Last-Modified"] = format_datetime(moment, usegmt=True)
    return headers


@router.get("/metadata")
def metadata(request: Request) -> Response:
    _check_format(request)
    return FhirResponse(capability_statement(_base(request)), pretty=_pretty(request))


@router.get("/{resource_type}/{res_id}")
def read(resource_type: str, res_id: str, request: Request) -> Response:
    _check_format(request)
    _check_type(resource_type)
    with read_only(_engine(request)) as uow:
        stored = uow.get(resource_type, res_id)
    if stored is None:
        raise FhirError(404, f"{resource_type}/{res_id} is not known", code="not-found")
    if stored.deleted:
        raise FhirError(410, f"{resource_type}/{res_id} was deleted (version {stored.version_id})",
                        code="deleted")
    return FhirResponse(stored.resource, headers=_versioned_headers(stored.resource), pretty=_pretty(request))


@router.get("/{resource_type}/{res_id}/_history/{version_id}")
def vread(resource_type: str, res_id: str, version_id: str, request: Request) -> Response:
    _check_format(request)
    _check_type(resource_type)
    if not version_id.isdigit():
        raise FhirError(400, f"version id '{version_id}' must be a whole number")
    with read_only(_engine(request)) as uow:
        row = uow.fetchone("SELECT deleted, content FROM resource_versions WHERE res_type=? AND res_id=? "
                           "AND version_id=?", (resource_type, res_id, int(version_id)))
    if row is None:
        raise FhirError(404, f"{resource_type}/{res_id}/_history/{version_id} is not known", code="not-found")
    if row[0]:
        raise FhirError(410, f"{resource_type}/{res_id} version {version_id} is a deletion", code="deleted")
    resource = loads(row[1])
    return FhirResponse(resource, headers=_versioned_headers(resource), pretty=_pretty(request))


@router.get("/{resource_type}")
def search_type(resource_type: str, request: Request) -> Response:
    _check_format(request)
    _check_type(resource_type)
    query = list(request.query_params.multi_items())
    lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
    try:
        with read_only(_engine(request)) as uow:
            result = search(uow, resource_type, query, lenient=lenient)
    except SearchError as exc:
        raise FhirError(400, str(exc), code="invalid", expression=[exc.param] if exc.param else None) from None
    base = _base(request)
    kept = [(k, v) for k, v in query if k not in ("_after",)]
    links = [{"relation": "self", "url": f"{base}/{resource_type}?{urlencode(kept)}"}]
    if result.next_after:
        links.append({"relation": "next",
                      "url": f"{base}/{resource_type}?{urlencode(kept + [('_after', result.next_after)])}"})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        bundle["total"] = result.total
    bundle["link"] = links
    bundle["entry"] = [{"fullUrl": f"{base}/{resource_type}/{r['id']}", "resource": r,
                        "search": {"mode": "match"}} for r in result.resources]
    return FhirResponse(bundle, pretty=_pretty(request))
