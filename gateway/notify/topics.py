"""The SubscriptionTopics the gateway publishes, loaded from ``profiles/SubscriptionTopic-*.json``.

The files are the definition (what the CapabilityStatement advertises, what a
Subscription may name in ``criteria``, which filters each topic supports); this
module only reads them.  R4 has no SubscriptionTopic resource, so the files use
the R4B shape the Backport IG points R4 servers to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gateway import codes
from gateway.settings import REPO_ROOT

PROFILES = REPO_ROOT / "profiles"

# How a filter's values are compared (notify/matching.py).  ``patient`` is a
# reference; ``organization`` is the legitimate-relationship set (references and
# ODS codes, see notify/relationships.py); everything else is a token.
REFERENCE_FILTERS = frozenset({"patient"})
ORGANIZATION_FILTER = "organization"


@dataclass(frozen=True, slots=True)
class Topic:
    id: str
    url: str
    title: str
    resource: str  # the focus resource type (Flag, CarePlan, Task, Appointment)
    filters: tuple[str, ...]  # canFilterBy.filterParameter values


def _load(path: Path) -> Topic:
    doc = json.loads(path.read_text())
    trigger = doc["resourceTrigger"][0]["resource"].rsplit("/", 1)[-1]
    return Topic(doc["id"], doc["url"], doc.get("title", doc["id"]), trigger,
                 tuple(f["filterParameter"] for f in doc.get("canFilterBy", ())))


@lru_cache(maxsize=1)
def all_topics() -> dict[str, Topic]:
    """Topic id -> Topic, for every profile file (checked against codes.TOPICS)."""
    topics = {t.id: t for t in map(_load, sorted(PROFILES.glob("SubscriptionTopic-*.json")))}
    missing = set(codes.TOPICS) - set(topics)
    if missing:
        raise RuntimeError(f"profiles/ lacks SubscriptionTopic files for {sorted(missing)}")
    return topics


def topic_by_url(url: str) -> Topic | None:
    """The topic a Subscription.criteria names (a trailing ``|version`` is allowed)."""
    url = url.split("|", 1)[0].strip()
    for topic in all_topics().values():
        if topic.url == url:
            return topic
    return None


def topic_url(topic_id: str) -> str:
    return all_topics()[topic_id].url


CAPABILITY_TOPIC_EXT = ("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                        "capabilitystatement-subscriptiontopic-canonical")
BACKPORT_OPERATIONS = (
    ("status", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"),
    ("events", "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"),
)


def advertise_topics(resources: list[dict]) -> None:
    """CapabilityStatement: each topic on the Subscription resource (Backport IG
    extension), and the $status / $events operations."""
    for entry in resources:
        if entry.get("type") == "Subscription":
            entry["extension"] = [{"url": CAPABILITY_TOPIC_EXT, "valueCanonical": t.url}
                                  for t in all_topics().values()]
            entry["supportedProfile"] = [
                "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"]
            entry["operation"] = [{"name": name, "definition": url} for name, url in BACKPORT_OPERATIONS]
