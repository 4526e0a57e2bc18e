"""Small helpers shared by the FHIR routers (base URL, formats, type checks, headers)."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from datetime import datetime
from email.utils import format_datetime
from typing import Any, Callable, TypeVar

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from gateway.api.errors import FhirError

T = TypeVar("T")
from gateway.store.search_params import RESOURCE_TYPES


def engine_of(request: Request):  # noqa: ANN201
    return request.app.state.engine


def base_url(request: Request) -> str:
    configured = request.app.state.settings.public_base_url
    return configured.rstrip("/") if configured else str(request.base_url).rstrip("/") + "/fhir"


def wants_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "").lower() == "true"


def check_format(request: Request) -> None:
    fmt = request.query_params.get("_format", "")
    accept = request.headers.get("accept", "")
    wanted = fmt or accept
    if wanted and not any(t in wanted for t in ("json", "*/*", "fhir+json")) and "xml" in wanted:
        raise FhirError(406, "only JSON is served (application/fhir+json); XML is not supported",
                        code="not-supported")


def check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise FhirError(404, f"resource type '{resource_type}' is not supported here", code="not-supported")


def versioned_headers(resource: dict[str, Any]) -> dict[str, str]:
    meta = resource.get("meta", {})
    headers = {"ETag": f'W/"{meta.get("versionId", "1")}"'}
    if meta.get("lastUpdated"):
        moment = datetime.fromisoformat(meta["lastUpdated"].replace("Z", "+00:00"))
        headers["Last-Modified"] = format_datetime(moment, usegmt=True)
    return headers


PREFER_RETURNS = {"minimal": "minimal", "representation": "representation",
                  "operationoutcome": "OperationOutcome"}


def prefer_return(request: Request) -> str:
    """``Prefer: return=minimal|representation|OperationOutcome`` (default representation)."""
    for part in request.headers.get("prefer", "").split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.lower() == "return":
                return PREFER_RETURNS.get(value.strip().strip('"').lower(), "representation")
    return "representation"


def version_location(base: str, resource: dict[str, Any]) -> str:
    """``{base}/{type}/{id}/_history/{version}``: the Location of a written version."""
    meta = resource.get("meta", {})
    return f"{base}/{resource['resourceType']}/{resource['id']}/_history/{meta.get('versionId', '1')}"


def information(diagnostics: str) -> dict[str, Any]:
    """An OperationOutcome saying what happened (Prefer: return=OperationOutcome)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": diagnostics}]}


# A few threads, not the default 40: a SQLite read is mostly CPU under the GIL, so
# more threads only contend; a few still let one request's disk read overlap others.
_READ_THREADS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gateway-read")


async def run_read(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """Run a read-only handler off the event loop, on the small read pool (SQLite) or
    the default thread pool (PostgreSQL, where reads wait on the network).

    Measured in bench/search.py with 32 clients: the default 40-thread pool spent
    much of its time in GIL contention; running inline on the loop doubled
    throughput on a small store but stalled the loop on disk reads of a large one
    (p99 ×3 at 1,000,000 appointments).
    """
    if engine_of(request).dialect.name == "sqlite":
        return await asyncio.get_running_loop().run_in_executor(_READ_THREADS, functools.partial(fn, *args))
    return await run_in_threadpool(fn, *args)
