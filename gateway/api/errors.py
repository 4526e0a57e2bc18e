"""Every API error is a FHIR OperationOutcome with the right HTTP status."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api.responses import FhirResponse

_ISSUE_CODE_BY_STATUS = {400: "invalid", 404: "not-found", 405: "not-supported", 406: "not-supported",
                         409: "conflict", 410: "deleted", 412: "conflict", 415: "not-supported",
                         422: "processing", 500: "exception"}


def operation_outcome(diagnostics: str, *, severity: str = "error", code: str = "processing",
                      expression: list[str] | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


class FhirError(Exception):
    """Raise anywhere in the API to answer with an OperationOutcome.

    ``issues`` (full OperationOutcome.issue dicts) replaces the single issue built
    from ``diagnostics``/``code``/``expression`` when one error has several causes
    (a resource failing validation in three places is one 422 with three issues).
    """

    def __init__(self, status: int, diagnostics: str, *, code: str | None = None,
                 expression: list[str] | None = None, issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _ISSUE_CODE_BY_STATUS.get(status, "processing")
        self.expression = expression
        self.issues = issues

    def outcome(self) -> dict[str, Any]:
        """This error as an OperationOutcome resource."""
        if self.issues:
            return {"resourceType": "OperationOutcome", "issue": list(self.issues)}
        return operation_outcome(self.diagnostics, code=self.code, expression=self.expression)


def outcome_response(status: int, diagnostics: str, *, code: str | None = None,
                     expression: list[str] | None = None) -> FhirResponse:
    body = operation_outcome(diagnostics, code=code or _ISSUE_CODE_BY_STATUS.get(status, "processing"),
                             expression=expression)
    return FhirResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FhirError)
    async def _fhir_error(_request: Request, exc: FhirError) -> FhirResponse:
        return FhirResponse(exc.outcome(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> FhirResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path}"
        if exc.status_code == 405:
            detail = f"{request.method} is not supported on {request.url.path}"
        response = outcome_response(exc.status_code, detail)
        if exc.headers:  # e.g. Allow on a 405
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> FhirResponse:
        return outcome_response(400, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> FhirResponse:
        return outcome_response(500, f"internal error: {type(exc).__name__}")
