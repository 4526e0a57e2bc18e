"""Problems found in an HL7 v2 message, located the way an ERR segment locates them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["E", "W", "I"]


@dataclass(slots=True)
class Issue:
    """Something the mapping could not do, with an HL7 location for ERR-2.

    ``code`` is from HL7 table 0357 (message error condition codes): 0 accepted,
    100 segment sequence error, 101 required field missing, 102 data type error,
    103 table value not found, 200 unsupported message type, 201 unsupported event
    code, 204 unknown key identifier, 205 duplicate key identifier, 206 application
    record locked, 207 application internal error.
    Severity E means the message is not processed (ACK AE/AR); W means it was
    processed with a warning (ACK AA with ERR).
    """

    severity: Severity
    code: int
    text: str
    segment: str = ""
    sequence: int = 1
    field: int | None = None
    component: int | None = None
    repetition: int | None = None
