"""FHIR JSON responses (application/fhir+json, serialised with orjson)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

FHIR_JSON = "application/fhir+json"


class FhirResponse(Response):
    media_type = FHIR_JSON

    def __init__(self, content: Any, status_code: int = 200, headers: dict[str, str] | None = None,
                 pretty: bool = False) -> None:
        self._pretty = pretty
        super().__init__(content, status_code=status_code, headers=headers)

    def render(self, content: Any) -> bytes:
        if content is None:
            return b""
        option = orjson.OPT_INDENT_2 if getattr(self, "_pretty", False) else 0
        return orjson.dumps(content, option=option)
