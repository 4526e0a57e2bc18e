"""Per-message state shared by the datatype converters and the engine.

Why a context object: converters are small pure-ish functions, but three things
cut across all of them -- naming identifier systems (the same scheme for every
CX, EI, XCN, XON, PL), reporting an issue at the HL7 location being read (for
the ACK's ERR-2), and creating the extra resources a field implies (an XCN
*is* a Practitioner).  One slotted object carries that per message, so the
compiled rules stay plain closures with no global state.
"""

from __future__ import annotations

import itertools
import os
import re
from functools import lru_cache
from typing import Any

from gateway.hl7v2.errors import Issue
from gateway.hl7v2.parser import DEFAULT_ENCODING, Encoding
from gateway.mapping.model import Match, ResourceIntent

__all__ = ["CodeMap", "MapContext", "Naming", "TypePolicy", "new_urn", "slug"]

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")


def _urn_head() -> str:
    h = os.urandom(10).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"urn:uuid:{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-"


_URN_MASK = (1 << 48) - 1


def _reseed() -> None:
    """New random bits per process (also after fork), so workers never share a sequence."""
    global _URN_HEAD, _URN_COUNTER, _URN_SALT
    _URN_HEAD = _urn_head()
    _URN_COUNTER = itertools.count()
    _URN_SALT = int.from_bytes(os.urandom(6), "big")


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_urn() -> str:
    """A fresh ``urn:uuid:`` (RFC 4122 version-4 layout) for an intent's full_url.

    Why not uuid.uuid4(): it reads the OS entropy pool on every call (~4 us here, eight
    intents a message, on the hot path).  These are placeholders that only need to be
    unique among the intents the store resolves, so 74 random bits per process plus a
    48-bit counter is enough and ~10x cheaper."""
    # An odd multiplier and an XOR are a bijection modulo 2**48: still unique, not sequential.
    return f"{_URN_HEAD}{((next(_URN_COUNTER) * 0x9E3779B97F4B) ^ _URN_SALT) & _URN_MASK:012x}"


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
                 "_coding_cache", "_resolved")

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
        self._resolved: dict[tuple, tuple[str, str]] = {}

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

    def resolve(self, namespace: str, universal: str, universal_type: str, type_code: str, kind: str,
                sender: str, default_system: str | None = None) -> tuple[str, str]:
        """(system, check) for an identifier's assigning authority -- :meth:`known`, else
        :meth:`system`.  Cached: a feed repeats the same few authorities all day."""
        key = (namespace, universal, universal_type, type_code, kind, sender, default_system)
        hit = self._resolved.get(key)
        if hit is None:
            row = self.known(namespace, universal, type_code, kind)
            if row is not None:
                hit = (row["target"], row.get("check", ""))
            else:
                hit = (self.system(namespace, universal, universal_type, kind, sender, default_system), "")
            if len(self._resolved) < 8192:
                self._resolved[key] = hit
        return hit

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


class TypePolicy:
    """How intents of one resource type are matched and merged (mappings/resources.yaml)."""

    __slots__ = ("resource_type", "match", "never", "merge", "same", "_any_only")

    def __init__(self, resource_type: str, match: tuple[tuple[str, Any], ...] = (),
                 never: tuple[tuple[str, Any], ...] = (), merge: dict[str, str] | None = None,
                 same: tuple[str, ...] = ()) -> None:
        self.resource_type = resource_type
        self.match = match    # ("system", str | regex) | ("type", code) | ("*", None), best first
        self.never = never    # selectors excluded from "*"
        self.merge = dict(merge or {})
        # match_same: without a matching identifier, a stored resource of the same feed whose
        # elements equal these (first: a reference, e.g. subject; then e.g. code) is this one
        self.same = tuple(same)
        self._any_only = match == (("*", None),) and not never

    def _rank(self, ident: dict[str, Any], system: str) -> int | None:
        """Index of the first selector this identifier satisfies (None: never match on it)."""
        for rank, (how, what) in enumerate(self.match):
            if how == "*":
                if not any(_selects(n, ident, system) for n in self.never):
                    return rank
            elif _selects((how, what), ident, system):
                return rank
        return None

    def matches(self, identifiers: list[dict[str, Any]]) -> list[Match]:
        """Identifiers to find the stored resource by, best first, without duplicates."""
        if self._any_only and len(identifiers) == 1:
            ident = identifiers[0]  # the common case: a Practitioner/Location with one identifier
            system, value = ident.get("system"), ident.get("value")
            return [Match(system, value)] if system and value else []
        ranked = []
        for position, ident in enumerate(identifiers):
            system, value = ident.get("system"), ident.get("value")
            if system and value:
                rank = self._rank(ident, system)
                if rank is not None:
                    ranked.append((rank, position, system, value))
        ranked.sort()
        out: list[Match] = []
        seen: set[tuple[str, str]] = set()
        for _, _, system, value in ranked:
            if (system, value) not in seen:
                seen.add((system, value))
                out.append(Match(system, value))
        return out


def _selects(selector: tuple[str, Any], ident: dict[str, Any], system: str) -> bool:
    how, what = selector
    if how == "system":
        return what == system if isinstance(what, str) else bool(what.fullmatch(system))
    if how == "type":
        return any(c.get("code") == what for c in ident.get("type", {}).get("coding", ()))
    return True


class MapContext:
    """State for mapping one message.  Converters read separators, zone and code
    maps from it, report issues at the current HL7 location, and register the
    Practitioner/Location/... intents that fields imply."""

    __slots__ = ("enc", "tz", "codes", "naming", "policies", "sender", "issues", "intents", "keyed", "memo_ok",
                 "_identity", "guard_time", "segment", "sequence", "field", "repetition", "component")

    def __init__(self, *, enc: Encoding = DEFAULT_ENCODING, tz: str = "Europe/London",
                 codes: dict[str, CodeMap], naming: Naming, policies: dict[str, TypePolicy],
                 sender: str = "unknown", guard_time: str | None = None) -> None:
        self.enc = enc
        # Rules may reuse a memoised conversion only under the standard separators: the same
        # raw text means something else under other encoding characters.
        self.memo_ok = (enc.component, enc.repetition, enc.escape, enc.subcomponent) == ("^", "~", "\\", "&")
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
