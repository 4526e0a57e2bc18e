"""Per-message state shared by the datatype converters and the engine.

Why a context object: converters are small pure-ish functions, but three things
cut across all of them -- naming identifier systems (the same scheme for every
CX, EI, XCN, XON, PL), reporting an issue at the HL7 location being read (for
the ACK's ERR-2), and creating the extra resources a field implies (an XCN
*is* a Practitioner).  One slotted object carries that per message, so the
compiled rules stay plain closures with no global state.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import DEFAULT_ENCODING, Encoding
from gateway.mapping.model import Match, ResourceIntent

__all__ = ["CodeMap", "MapContext", "Naming", "TypePolicy", "new_urn", "slug"]

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


_RANDOM = random.Random(os.urandom(32))


def new_urn() -> str:
    """A random (version 4) ``urn:uuid:`` for an intent's full_url.

    uuid.uuid4() reads the OS entropy pool on every call (~4 us here, 8 intents a
    message); these placeholders only need to be unique within one unit of work,
    so a seeded PRNG formatted as a v4 UUID is enough and ~5x cheaper."""
    n = _RANDOM.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)
    n = n & ~(0xC000 << 48) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@lru_cache(maxsize=1024)
def slug(text: str) -> str:
    """A namespace as a URL path segment: lower case, runs of other characters -> '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.strip().lower()).strip("-") or "unknown"


class CodeMap:
    """One code map (a CSV in mappings/codes, possibly overridden per sender).

    Keys are compared case-insensitively (vendors send ``Booked``, ``BOOKED``
    and ``booked`` for the same HL7 table 0278 code).  Each row is a dict of the
    CSV's columns; ``target`` is the usual one.
    """

    __slots__ = ("name", "rows")

    def __init__(self, name: str, rows: dict[str, dict[str, str]]) -> None:
        self.name = name
        self.rows = rows

    def row(self, code: str) -> dict[str, str] | None:
        return self.rows.get(code.strip().upper())

    def target(self, code: str) -> str | None:
        row = self.rows.get(code.strip().upper())
        return row.get("target") if row else None

    def with_overrides(self, overrides: dict[str, dict[str, str]]) -> CodeMap:
        rows = dict(self.rows)
        rows.update({k.strip().upper(): v for k, v in overrides.items()})
        return CodeMap(self.name, rows)


class Naming:
    """The identifier-system scheme (documented in docs/mapping.md, "Identifier systems").

    In order: a known assigning authority / identifier type / OID from
    ``codes/identifier-systems.csv`` (e.g. NHS -> the NHS number system); a
    universal id (HD-2: ``urn:oid:`` for an ISO OID, ``urn:uuid:``, or a URI as
    is); a namespace id (HD-1) -> ``{identifier_base}/{namespace}/{kind}``; the
    rule's ``default_system``; the sender's namespace (MSH-4, else MSH-3) ->
    ``{identifier_base}/{sender}/{kind}``.
    """

    __slots__ = ("identifier_base", "codesystem_base", "_authority", "_contains", "_types", "_coding",
                 "_coding_cache")

    def __init__(self, identifier_base: str, codesystem_base: str, identifier_systems: CodeMap,
                 coding_systems: CodeMap) -> None:
        self.identifier_base = identifier_base.rstrip("/")
        self.codesystem_base = codesystem_base.rstrip("/")
        self._authority: dict[str, dict[str, str]] = {}
        self._contains: list[tuple[str, dict[str, str]]] = []
        self._types: dict[str, dict[str, str]] = {}
        for key, row in identifier_systems.rows.items():
            how, _, value = key.partition(":")
            if how == "AUTHORITY":
                self._authority[value] = row
            elif how == "OID":
                self._contains.append((value, row))
            elif how == "TYPE":
                self._types[value] = row
            else:
                raise ValueError(f"identifier-systems.csv: source {key!r} must start with authority:, oid: or type:")
        self._coding = coding_systems
        self._coding_cache: dict[tuple[str, str], str | None] = {}

    @staticmethod
    def _applies(row: dict[str, str], kind: str) -> bool:
        kinds = row.get("kinds", "*") or "*"
        return kinds == "*" or kind in kinds.split()

    def known(self, namespace: str, universal: str, type_code: str, kind: str) -> dict[str, str] | None:
        """The identifier-systems.csv row that names this identifier's system, if any."""
        if namespace:
            row = self._authority.get(namespace.strip().upper())
            if row and self._applies(row, kind):
                return row
        if universal:
            row = self._authority.get(universal.strip().upper())
            if row and self._applies(row, kind):
                return row
        for oid, row in self._contains:
            if ((universal and oid in universal) or (namespace and oid in namespace)) and self._applies(row, kind):
                return row
        if type_code:
            row = self._types.get(type_code.strip().upper())
            if row and self._applies(row, kind):
                return row
        return None

    def system(self, namespace: str, universal: str, universal_type: str, kind: str, sender: str,
               default_system: str | None = None) -> str:
        """The system URI for an assigning authority that is not a known one."""
        if universal:
            utype = universal_type.strip().upper()
            if utype == "ISO" or (not utype and _OID.fullmatch(universal)):
                return f"urn:oid:{universal}"
            if utype == "UUID":
                return f"urn:uuid:{universal.lower()}"
            if utype in ("URI", "URL") or universal.startswith(("http://", "https://", "urn:")):
                return universal
            if not namespace:
                namespace = universal
        if namespace:
            return f"{self.identifier_base}/{slug(namespace)}/{kind}"
        if default_system:
            return default_system
        return f"{self.identifier_base}/{sender}/{kind}"

    def local_system(self, sender: str, kind: str) -> str:
        return f"{self.identifier_base}/{sender}/{kind}"

    def coding_system(self, name: str, sender: str = "unknown") -> str | None:
        """A v2 coding-system name (HL7 table 0396, CWE-3) as a FHIR system URI.

        Names not in coding-systems.csv (``L``, ``99RVH`` ...) are local to the sender, so
        they get a system under the sender's namespace: two PASs' "L" codes never collide."""
        if not name:
            return None
        key = (name, sender)
        cached = self._coding_cache.get(key, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        uri = self._coding_system(name, sender)
        if len(self._coding_cache) < 4096:
            self._coding_cache[key] = uri
        return uri

    def _coding_system(self, name: str, sender: str) -> str | None:
        uri = self._coding.target(name)
        if uri:
            return uri
        upper = name.strip().upper()
        if upper.startswith("HL7") and upper[3:].isdigit():
            return f"http://terminology.hl7.org/CodeSystem/v2-{upper[3:]}"
        if name.startswith(("http://", "https://", "urn:")):
            return name
        if _OID.fullmatch(name):
            return f"urn:oid:{name}"
        return f"{self.codesystem_base}/{sender}/{slug(name)}"


@dataclass(frozen=True, slots=True)
class TypePolicy:
    """How intents of one resource type are matched and merged (mappings/resources.yaml)."""

    resource_type: str
    match: tuple[tuple[str, Any], ...] = ()   # ("system", regex) | ("type", code) | ("*", None)
    never: tuple[tuple[str, Any], ...] = ()   # excluded from "*"
    merge: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def _hits(selector: tuple[str, Any], ident: dict[str, Any]) -> bool:
        how, what = selector
        if how == "system":
            return bool(what.fullmatch(ident.get("system", "")))
        if how == "type":
            for coding in ident.get("type", {}).get("coding", ()):
                if coding.get("code") == what:
                    return True
            return False
        return True

    def matches(self, identifiers: list[dict[str, Any]]) -> list[Match]:
        """Identifiers to find the stored resource by, best first, without duplicates."""
        if len(identifiers) == 1 and self.match == (("*", None),) and not self.never:
            ident = identifiers[0]  # the common case: a Practitioner/Location with one identifier
            system, value = ident.get("system"), ident.get("value")
            return [Match(system, value)] if system and value else []
        out: list[Match] = []
        seen: set[tuple[str, str]] = set()
        for selector in self.match:
            for ident in identifiers:
                system, value = ident.get("system"), ident.get("value")
                if not system or not value or (system, value) in seen:
                    continue
                if selector[0] == "*" and any(self._hits(n, ident) for n in self.never):
                    continue
                if self._hits(selector, ident):
                    seen.add((system, value))
                    out.append(Match(system, value))
        return out


class MapContext:
    """State for mapping one message.  Converters read separators, zone and code
    maps from it, report issues at the current HL7 location, and register the
    Practitioner/Location/... intents that fields imply."""

    __slots__ = ("enc", "tz", "codes", "naming", "policies", "sender", "issues", "intents", "keyed",
                 "_identity", "guard_time", "segment", "sequence", "field", "repetition", "component")

    def __init__(self, *, enc: Encoding = DEFAULT_ENCODING, tz: str = "Europe/London",
                 codes: dict[str, CodeMap], naming: Naming, policies: dict[str, TypePolicy],
                 sender: str = "unknown", guard_time: str | None = None) -> None:
        self.enc = enc
        self.tz = tz
        self.codes = codes
        self.naming = naming
        self.policies = policies
        self.sender = sender
        self.guard_time = guard_time
        self.issues: list[Issue] = []
        self.intents: list[ResourceIntent] = []
        self.keyed: dict[str, str] = {}  # full_url of each message-level intent by key ("patient")
        self._identity: dict[tuple[str, str, str], str] = {}
        self.segment = ""
        self.sequence = 1
        self.field: int | None = None
        self.repetition: int | None = None
        self.component: int | None = None

    # -- locations and issues -------------------------------------------------------
    def at(self, segment: str, sequence: int = 1, field: int | None = None,
           repetition: int | None = None, component: int | None = None) -> None:
        self.segment, self.sequence, self.field = segment, sequence, field
        self.repetition, self.component = repetition, component

    @property
    def location(self) -> str:
        """The current HL7 location as people write it: ``PID-3`` or ``SCH-11.4``."""
        text = f"{self.segment}-{self.field}" if self.field else self.segment
        if self.component:
            text += f".{self.component}"
        return text

    def issue(self, severity: str, code: int, text: str, *, component: int | None = None) -> None:
        self.issues.append(Issue(severity, code, text, self.segment, self.sequence, self.field,  # type: ignore[arg-type]
                                 component if component is not None else self.component, self.repetition))

    # -- systems ----------------------------------------------------------------------
    def coding_system(self, name: str) -> str | None:
        return self.naming.coding_system(name, self.sender)

    # -- implied resources -----------------------------------------------------------
    def add_intent(self, resource_type: str, resource: dict[str, Any], key: str = "") -> str:
        """Register a resource implied by a field (an XCN's Practitioner ...) and return its
        full_url.  The same identifier twice in one message gives one intent."""
        identifiers = resource.get("identifier") or ()
        first = identifiers[0] if identifiers else None
        ident_key = (resource_type, first.get("system", ""), first.get("value", "")) if first else None
        if ident_key is not None:
            known = self._identity.get(ident_key)
            if known is not None:
                return known
        policy = self.policies.get(resource_type)
        intent = ResourceIntent(
            full_url=new_urn(),
            resource_type=resource_type,
            resource=resource,
            matches=policy.matches(list(identifiers)) if policy else [],
            merge=dict(policy.merge) if policy else {},
            guard_time=self.guard_time,
            key=key or resource_type.lower(),
        )
        self.intents.append(intent)
        if ident_key is not None:
            self._identity[ident_key] = intent.full_url
        return intent.full_url
