"""FHIR search routes: type search by GET (and, later, POST ``_search``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.common import base_url, check_format, check_type, engine_of, wants_pretty
from gateway.api.errors import FhirError
from gateway.api.responses import FhirResponse
from gateway.store.reading import read_only
from gateway.store.search import SearchError, search

router = APIRouter(prefix="/fhir")


@router.get("/{resource_type}")
def search_type(resource_type: str, request: Request) -> Response:
    check_format(request)
    check_type(resource_type)
    query = list(request.query_params.multi_items())
    lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
    try:
        with read_only(engine_of(request)) as uow:
            result = search(uow, resource_type, query, lenient=lenient)
    except SearchError as exc:
        raise FhirError(400, str(exc), code="invalid", expression=[exc.param] if exc.param else None) from None
    base = base_url(request)
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
    return FhirResponse(bundle, pretty=wants_pretty(request))
