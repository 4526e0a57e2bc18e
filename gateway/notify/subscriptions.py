"""Subscription resources (R4 + the Subscriptions R5 Backport IG): checked before
they are written, and mirrored into ``subscription_state`` for the delivery worker.

What a Subscription must say (else 422 naming the element):

* ``criteria`` — the canonical URL of one of our topics (notify/topics.py);
* ``criteria`` extension ``backport-filter-criteria`` (0..*) — ``[Type?]name=value[,value]&...``
  using only the filters the topic lists in ``canFilterBy``; no modifiers;
* ``channel.type`` ``rest-hook``; ``channel.endpoint`` an absolute http(s) URL;
* ``channel.payload`` ``application/fhir+json`` (or ``application/json``), its extension
  ``backport-payload-content`` ``empty`` | ``id-only`` (default) | ``full-resource``;
* ``channel.header`` entries ``Name: value``;
* ``channel`` extensions ``backport-heartbeat-period``, ``backport-timeout``,
  ``backport-max-count`` (positive integers).

Product extensions (codes.py): ``subscriber-organization`` binds the subscription to
an Organization / HealthcareService (reference or identifier) — it then receives
events only for children that party has a relationship with (notify/relationships.py);
``subscription-secret`` (valueString, 16+ characters) sets the HMAC secret.  The
secret is write-only: it is removed before the resource is stored and kept in
``subscription_state``; without one the gateway generates a secret nobody can read
(send one to be able to verify signatures).

Status: the server owns activation.  A client's create (or a change of endpoint,
topic, filters or headers, or any write while in ``error``) makes it ``requested``;
the worker's handshake then makes it ``active`` or ``error``.  ``off`` stops it.
"""

from __future__ import annotations

import hashlib
import re
import secrets as secrets_module
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from gateway import codes
from gateway.notify import signals
from gateway.notify.topics import ORGANIZATION_FILTER, REFERENCE_FILTERS, Topic, topic_by_url
from gateway.store.hooks import WriteRejected, after_changes, before_write
from gateway.store.unit_of_work import Change, Stored, UnitOfWork

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
EXT_FILTER = f"{BACKPORT}/backport-filter-criteria"
EXT_CONTENT = f"{BACKPORT}/backport-payload-content"
EXT_HEARTBEAT = f"{BACKPORT}/backport-heartbeat-period"
EXT_TIMEOUT = f"{BACKPORT}/backport-timeout"
EXT_MAX_COUNT = f"{BACKPORT}/backport-max-count"
PROFILE = f"{BACKPORT}/backport-subscription"

CONTENTS = ("empty", "id-only", "full-resource")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
MAX_TIMEOUT_SECONDS = 120
MAX_COUNT_LIMIT = 1000
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the gateway sets itself; a channel header may not replace them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "x-gateway-signature",
                              "x-gateway-subscription", "transfer-encoding", "connection"})


@dataclass(slots=True)
class SubscriptionConfig:
    """What the worker needs from a Subscription, parsed once."""

    topic: str  # topic id
    endpoint: str
    content: str = "id-only"
    headers: list[tuple[str, str]] = field(default_factory=list)
    filters: list[dict[str, list[str]]] = field(default_factory=list)  # each criteria string: AND of OR-lists
    binding: list[str] = field(default_factory=list)  # parties (references / system|value); empty: system-level
    heartbeat_seconds: int = 0
    timeout_seconds: float = 0.0  # 0: settings.delivery_timeout_seconds
    max_count: int = 0  # 0: settings.delivery_max_count

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, text: str) -> "SubscriptionConfig":
        data = orjson.loads(text)
        data["headers"] = [tuple(h) for h in data.get("headers") or ()]
        return cls(**data)

    def delivery_key(self) -> tuple:
        """What, when changed, needs a new handshake."""
        return (self.topic, self.endpoint, tuple(self.headers), orjson.dumps(self.filters), tuple(self.binding))


def _reject(message: str, expression: str) -> WriteRejected:
    return WriteRejected(message, expression=[expression], code="invalid")


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    return [e for e in ((element or {}).get("extension") or ()) if isinstance(e, dict) and e.get("url") == url]


def _single_int(channel: dict, url: str, value_key: str, name: str, *, upper: int | None = None) -> int:
    found = _extensions(channel, url)
    if not found:
        return 0
    where = f"Subscription.channel.extension('{url}')"
    if len(found) > 1:
        raise _reject(f"{name} may be given once", where)
    value = found[0].get(value_key, found[0].get("valueUnsignedInt", found[0].get("valuePositiveInt",
                                                                                 found[0].get("valueInteger"))))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (upper and value > upper):
        limit = f" and at most {upper}" if upper else ""
        raise _reject(f"{name} must be a positive integer{limit} ({value_key}), got {value!r}", where)
    return value


def parse_subscription(resource: dict[str, Any]) -> SubscriptionConfig:
    """The delivery configuration of a Subscription, or WriteRejected naming the element."""
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _reject("criteria must be the canonical URL of a SubscriptionTopic", "Subscription.criteria")
    topic = topic_by_url(criteria)
    if topic is None:
        raise _reject(f"criteria '{criteria}' is not a topic this server publishes "
                      f"(see CapabilityStatement; e.g. {codes.TOPIC_BASE}/{codes.TOPIC_WNB_FLAG})",
                      "Subscription.criteria")
    filters = [_parse_filter(topic, ext, i) for i, ext in enumerate(_extensions(resource.get("_criteria"), EXT_FILTER))]

    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise _reject(f"channel.type '{channel.get('type')}' is not supported; this server delivers rest-hook",
                      "Subscription.channel.type")
    endpoint = channel.get("endpoint")
    parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _reject(f"channel.endpoint must be an absolute http or https URL, got {endpoint!r}",
                      "Subscription.channel.endpoint")
    payload = channel.get("payload")
    if not payload:
        raise _reject("channel.payload (the MIME type) is required: application/fhir+json",
                      "Subscription.channel.payload")
    if str(payload).split(";", 1)[0].strip().lower() not in PAYLOAD_TYPES:
        raise _reject(f"channel.payload '{payload}' is not supported; use application/fhir+json",
                      "Subscription.channel.payload")
    content = "id-only"
    content_ext = _extensions(channel.get("_payload"), EXT_CONTENT)
    if content_ext:
        content = content_ext[0].get("valueCode")
        if content not in CONTENTS:
            raise _reject(f"backport-payload-content must be one of {', '.join(CONTENTS)}, got {content!r}",
                          f"Subscription.channel.payload.extension('{EXT_CONTENT}')")
    headers = []
    for i, header in enumerate(channel.get("header") or ()):
        name, sep, value = str(header).partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME.match(name) or "\n" in value or "\r" in value:
            raise _reject(f"channel.header[{i}] must be 'Name: value', got {header!r}",
                          f"Subscription.channel.header[{i}]")
        if name.lower() in RESERVED_HEADERS:
            raise _reject(f"channel.header[{i}]: {name} is set by the server", f"Subscription.channel.header[{i}]")
        headers.append((name, value.strip()))
    return SubscriptionConfig(
        topic=topic.id, endpoint=endpoint, content=content, headers=headers, filters=filters,
        binding=_binding(resource),
        heartbeat_seconds=_single_int(channel, EXT_HEARTBEAT, "valueUnsignedInt", "backport-heartbeat-period"),
        timeout_seconds=float(_single_int(channel, EXT_TIMEOUT, "valueUnsignedInt", "backport-timeout",
                                          upper=MAX_TIMEOUT_SECONDS)),
        max_count=_single_int(channel, EXT_MAX_COUNT, "valuePositiveInt", "backport-max-count",
                              upper=MAX_COUNT_LIMIT),
    )


def _parse_filter(topic: Topic, ext: dict[str, Any], index: int) -> dict[str, list[str]]:
    where = f"Subscription.criteria.extension('{EXT_FILTER}')[{index}]"
    text = ext.get("valueString")
    if not isinstance(text, str) or not text.strip():
        raise _reject("backport-filter-criteria needs a valueString like "
                      f"'{topic.resource}?patient=Patient/123'", where)
    query = text.strip()
    if "?" in query:
        rtype, query = query.split("?", 1)
        if rtype and rtype != topic.resource:
            raise _reject(f"filter '{text}' is on {rtype}, but topic {topic.id} is about {topic.resource}", where)
    criteria: dict[str, list[str]] = {}
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs:
        raise _reject(f"filter '{text}' has no name=value", where)
    for name, value in pairs:
        if ":" in name:
            raise _reject(f"filter '{name}': modifiers are not supported", where)
        if name not in topic.filters:
            raise _reject(f"topic {topic.id} cannot be filtered by '{name}'; it supports "
                          f"{', '.join(topic.filters)}", where)
        values = [v.strip() for v in value.split(",") if v.strip()]
        if not values:
            raise _reject(f"filter '{name}' has no value", where)
        if name in REFERENCE_FILTERS and any(" " in v for v in values):
            raise _reject(f"filter '{name}' needs references like Patient/123", where)
        criteria.setdefault(name, []).extend(values)
    return criteria


def _binding(resource: dict[str, Any]) -> list[str]:
    parties: list[str] = []
    for i, ext in enumerate(_extensions(resource, codes.EXT_SUBSCRIBER_ORGANIZATION)):
        where = f"Subscription.extension('{codes.EXT_SUBSCRIBER_ORGANIZATION}')[{i}]"
        ref = ext.get("valueReference")
        if not isinstance(ref, dict):
            raise _reject("subscriber-organization needs a valueReference to an Organization or "
                          "HealthcareService (reference or identifier)", where)
        ident = ref.get("identifier") or {}
        if ident.get("system") and ident.get("value"):
            parties.append(f"{ident['system']}|{ident['value']}")
        reference = str(ref.get("reference") or "")
        if reference:
            kind, _, rid = reference.rstrip("/").rpartition("/")
            kind = kind.rsplit("/", 1)[-1]
            if kind not in ("Organization", "HealthcareService") or not rid:
                raise _reject(f"subscriber-organization '{reference}' must be Organization/id or "
                              "HealthcareService/id", where)
            parties.append(f"{kind}/{rid}")
        if not parties:
            raise _reject("subscriber-organization needs a reference or an identifier", where)
    return parties


# --- matching an event against a subscription ------------------------------------------------
def _token_matches(wanted: str, have: list[str]) -> bool:
    if "|" in wanted:
        return wanted in have
    return any(h.rsplit("|", 1)[-1] == wanted for h in have)


def _reference_matches(wanted: str, have: list[str]) -> bool:
    parts = wanted.rstrip("/").split("/")
    key = "/".join(parts[-2:]) if len(parts) >= 2 else wanted
    return key in have if "/" in key else any(h.rsplit("/", 1)[-1] == key for h in have)


def _party_matches(wanted: str, have: list[str]) -> bool:
    if "|" in wanted:
        return wanted in have
    if "/" in wanted:
        return _reference_matches(wanted, have)
    return any(h.rsplit("|", 1)[-1] == wanted for h in have if "|" in h)  # a bare ODS code


def matches(config: SubscriptionConfig, topic: str, filters: dict[str, list[str]]) -> bool:
    """Does an event (its topic and the filter values stored with it) go to this subscription?"""
    if config.topic != topic:
        return False
    parties = filters.get(ORGANIZATION_FILTER) or []
    if config.binding and not any(_party_matches(b, parties) for b in config.binding):
        return False
    for criteria in config.filters:
        for name, wanted in criteria.items():
            have = filters.get(name) or []
            test = (_reference_matches if name in REFERENCE_FILTERS else
                    _party_matches if name == ORGANIZATION_FILTER else _token_matches)
            if not any(test(w, have) for w in wanted):
                return False
    return True


# --- hooks ------------------------------------------------------------------------------------
def _fingerprint(resource: dict[str, Any]) -> str:
    body = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _take_secret(resource: dict[str, Any]) -> str | None:
    found = _extensions(resource, codes.EXT_SUBSCRIPTION_SECRET)
    if not found:
        return None
    value = found[0].get("valueString")
    if not isinstance(value, str) or len(value) < 16 or len(value) > 200:
        raise _reject("subscription-secret must be a valueString of 16 to 200 characters",
                      f"Subscription.extension('{codes.EXT_SUBSCRIPTION_SECRET}')")
    rest = [e for e in resource.get("extension") or () if e.get("url") != codes.EXT_SUBSCRIPTION_SECRET]
    if rest:
        resource["extension"] = rest
    else:
        resource.pop("extension", None)
    return value


@before_write("Subscription")
def check_subscription(uow: UnitOfWork, resource: dict[str, Any], before: Stored | None) -> dict[str, Any]:
    resource = dict(resource)
    secret = _take_secret(resource)
    config = parse_subscription(resource)
    if not getattr(uow, "subscription_internal", False):
        resource = _client_status(resource, config, before)
    if secret is not None:
        # The id is not known yet on a create: remember the secret by content and
        # pick it up in the after-change hook (same transaction).
        uow.__dict__.setdefault("_subscription_secrets", {})[_fingerprint(resource)] = secret
    return resource


def _client_status(resource: dict[str, Any], config: SubscriptionConfig, before: Stored | None) -> dict[str, Any]:
    """The server owns activation (see the module doc)."""
    wanted = resource.get("status")
    if wanted == "off":
        return resource
    keep_active = False
    if before is not None and before.resource.get("status") == "active" and wanted in ("active", "requested"):
        try:
            keep_active = parse_subscription(before.resource).delivery_key() == config.delivery_key()
        except WriteRejected:
            keep_active = False
    resource["status"] = "active" if keep_active else "requested"
    if not keep_active:
        resource.pop("error", None)
    return resource


@after_changes(order=85, name="subscriptions")
def mirror_subscriptions(uow: UnitOfWork, changes: list[Change]) -> None:
    """Keep ``subscription_state`` in step with the Subscription resources (same transaction)."""
    touched = False
    stash: dict[str, str] = uow.__dict__.get("_subscription_secrets", {})
    for change in changes:
        after = change.after
        if after.res_type != "Subscription":
            continue
        touched = True
        if after.deleted:
            uow.execute("UPDATE subscription_state SET status='off', version_id=? WHERE sub_id=?",
                        (after.version_id, after.res_id))
            continue
        config = parse_subscription(after.resource)
        status = after.resource.get("status", "requested")
        secret = stash.pop(_fingerprint(after.resource), "")
        existing = uow.fetchone("SELECT secret FROM subscription_state WHERE sub_id=?", (after.res_id,))
        if existing is None:
            start = uow.fetchone("SELECT COALESCE(MAX(id), 0) FROM outbox_events")[0]
            uow.execute(
                "INSERT INTO subscription_state (sub_id, topic, status, version_id, secret, config, "
                "start_outbox_id, events_count, delivered_through, attempts, failing_since_us, next_attempt_us, "
                "last_sent_us, last_error, lease_owner, lease_until_us) VALUES (?,?,?,?,?,?,?,0,0,0,0,0,0,'','',0)",
                (after.res_id, config.topic, status, after.version_id,
                 secret or secrets_module.token_urlsafe(32), config.to_json(), start))
            continue
        uow.execute("UPDATE subscription_state SET topic=?, status=?, version_id=?, config=?, secret=? "
                    "WHERE sub_id=?",
                    (config.topic, status, after.version_id, config.to_json(), secret or existing[0], after.res_id))
        if status == "requested":  # a fresh start: forget the backoff of the last endpoint
            uow.execute("UPDATE subscription_state SET attempts=0, failing_since_us=0, next_attempt_us=0, "
                        "last_error='' WHERE sub_id=?", (after.res_id,))
    if touched:
        signals.wake()
