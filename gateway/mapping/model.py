"""What a mapping produces: resource intents, before any database is involved.

A mapping turns one HL7 v2 message into a list of :class:`ResourceIntent` — "this
Patient, found by these identifiers, should now say this" — plus the issues it met
on the way.  The store's unit of work resolves each intent to a stored resource
(matching, merging, versioning); ``gateway convert`` renders the same intents as a
FHIR transaction Bundle.  Keeping mapping free of I/O is what makes it testable
and lets the convert command touch no database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.hl7v2.errors import Issue

__all__ = ["Issue", "Match", "MappingError", "MappingResult", "ResourceIntent"]


@dataclass(slots=True)
class Match:
    """One way to find an existing resource: an identifier (system|value)."""

    system: str
    value: str


@dataclass(slots=True)
class ResourceIntent:
    """One resource the message says something about.

    - ``full_url`` is a ``urn:uuid:`` placeholder; other intents refer to this one
      with ``{"reference": full_url}`` and the store rewrites it to ``Type/id``.
    - ``matches`` are tried in order to find the existing resource (e.g. NHS number,
      then the sender's MRN).  No match means create.
    - ``action``: ``upsert`` merges ``resource`` into the existing one (see
      ``merge``); ``delete`` marks the found resource deleted (S17); ``merge-into``
      is an ADT A40: the resource found by ``matches`` is the non-surviving one and
      every reference to it moves to the intent named by ``merge_target``.
    - ``merge``: how list elements combine with what is stored, by element name:
      ``union`` (identifier, telecom ... keep every distinct entry) or
      ``replace`` (the default for everything not named).
    - ``guard_time``: an instant (ISO 8601) of the source event (MSH-7).  An older
      message never overwrites state written by a newer one.
    - ``same``: without ``matches`` (no identifier), how a resend is recognised: the
      stored resource from the same feed whose elements equal these (``subject`` -- a
      reference, possibly to another intent -- and e.g. ``code``: a DG1 without DG1-20).
    """

    resource_type: str
    resource: dict[str, Any]
    matches: list[Match] = field(default_factory=list)
    action: Literal["upsert", "delete", "merge-into"] = "upsert"
    merge: dict[str, str] = field(default_factory=dict)
    full_url: str = field(default_factory=lambda: f"urn:uuid:{uuid.uuid4()}")
    guard_time: str | None = None
    merge_target: str | None = None  # full_url of the surviving resource's intent
    key: str = ""  # short label for logs and tests ("patient", "appointment", ...)
    same: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MappingResult:
    """Everything one message maps to."""

    message_type: str  # e.g. "SIU^S12"
    intents: list[ResourceIntent] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "E"]

    def first(self, resource_type: str) -> ResourceIntent | None:
        for intent in self.intents:
            if intent.resource_type == resource_type:
                return intent
        return None


class MappingError(Exception):
    """The message cannot be mapped at all; carries the issues for the ACK."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(i.text for i in issues))
        self.issues = issues
