"""Database tables: versioned FHIR resources, their search index, the HL7 message log,
the outbox, subscription delivery state and the rules scheduler state.

The shape follows the mature FHIR servers (HAPI's JPA server): each resource is a
JSON blob with a version, a history table keeps every version, and small per-kind
index tables (token, string, date, reference) hold what searches need, rewritten
whenever the resource changes.  Timestamps that are compared live as integer
microseconds since the epoch (UTC) so SQLite and PostgreSQL order them alike;
``last_updated`` is also kept as the FHIR instant text that ``meta.lastUpdated`` shows.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Text, false, text
from sqlmodel import Field, SQLModel


class Resource(SQLModel, table=True):
    """The current version of every resource (deleted ones stay, flagged)."""

    __tablename__ = "resources"

    res_type: str = Field(primary_key=True, max_length=64)
    res_id: str = Field(primary_key=True, max_length=64)
    version_id: int
    last_updated: str = Field(max_length=40)
    last_updated_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    deleted: bool = Field(default=False)
    source: str = Field(default="", max_length=200)
    content: str = Field(sa_column=Column(Text, nullable=False))


class ResourceVersion(SQLModel, table=True):
    """Every version ever written: vread and _history read from here."""

    __tablename__ = "resource_versions"
    __table_args__ = (Index("ix_resource_versions_updated", "last_updated_us"),)

    res_type: str = Field(primary_key=True, max_length=64)
    res_id: str = Field(primary_key=True, max_length=64)
    version_id: int = Field(primary_key=True)
    last_updated: str = Field(max_length=40)
    last_updated_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    deleted: bool = Field(default=False)
    method: str = Field(max_length=10)  # create | update | delete
    content: str = Field(sa_column=Column(Text, nullable=False))


# The index tables are keyed by their owner first: (res_id, res_type, param, value...)
# is the primary key, so rewriting a resource's rows touches one b-tree region, and
# on SQLite they are WITHOUT ROWID tables (no separate rowid b-tree to maintain).
# A second index serves the searches.

class TokenIndex(SQLModel, table=True):
    """identifier, code, status ...: (system, code) pairs."""

    __tablename__ = "idx_token"
    __table_args__ = (
        Index("ix_idx_token_lookup", "res_type", "param", "code", "system"),
        {"sqlite_with_rowid": False},
    )

    res_id: str = Field(primary_key=True, max_length=64)
    res_type: str = Field(primary_key=True, max_length=64)
    param: str = Field(primary_key=True, max_length=64)
    system: str = Field(default="", primary_key=True, max_length=255)
    code: str = Field(default="", primary_key=True, max_length=255)


class StringIndex(SQLModel, table=True):
    """name, family, address ...: a normalised (case- and accent-folded) form for
    the default prefix match, and the exact text for ``:exact``."""

    __tablename__ = "idx_string"
    __table_args__ = (
        Index("ix_idx_string_lookup", "res_type", "param", "value_norm"),
        {"sqlite_with_rowid": False},
    )

    res_id: str = Field(primary_key=True, max_length=64)
    res_type: str = Field(primary_key=True, max_length=64)
    param: str = Field(primary_key=True, max_length=64)
    value_exact: str = Field(primary_key=True, max_length=255)
    value_norm: str = Field(max_length=255)


class DateIndex(SQLModel, table=True):
    """birthdate, date ...: the instant range [low, high] the value covers."""

    __tablename__ = "idx_date"
    __table_args__ = (
        Index("ix_idx_date_lookup", "res_type", "param", "low_us", "high_us"),
        {"sqlite_with_rowid": False},
    )

    res_id: str = Field(primary_key=True, max_length=64)
    res_type: str = Field(primary_key=True, max_length=64)
    param: str = Field(primary_key=True, max_length=64)
    low_us: int = Field(sa_column=Column(BigInteger, primary_key=True, nullable=False))
    high_us: int = Field(sa_column=Column(BigInteger, primary_key=True, nullable=False))


class ReferenceIndex(SQLModel, table=True):
    """patient, actor, subject ...: the referenced resource's type and id."""

    __tablename__ = "idx_reference"
    __table_args__ = (
        Index("ix_idx_reference_lookup", "res_type", "param", "target_id", "target_type"),
        {"sqlite_with_rowid": False},
    )

    res_id: str = Field(primary_key=True, max_length=64)
    res_type: str = Field(primary_key=True, max_length=64)
    param: str = Field(primary_key=True, max_length=64)
    target_type: str = Field(primary_key=True, max_length=64)
    target_id: str = Field(primary_key=True, max_length=255)


class MessageLog(SQLModel, table=True):
    """Every HL7 v2 message received, raw, with what became of it and the ACK sent.

    ``accepted`` is true once a message's changes committed; the partial unique
    index on (sender_key, control_id) over accepted rows is what makes a resend
    of a processed message a duplicate, even across replicas.
    """

    __tablename__ = "message_log"
    __table_args__ = (
        Index(
            "ux_message_log_accepted",
            "sender_key",
            "control_id",
            unique=True,
            sqlite_where=text("accepted = 1"),
            postgresql_where=text("accepted"),
        ),
        Index("ix_message_log_outcome", "outcome", "id"),
        Index("ix_message_log_control", "control_id", "sender_key"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    received_at: str = Field(max_length=40)
    transport: str = Field(max_length=10)  # mllp | http | file | reprocess
    peer: str = Field(default="", max_length=100)
    sender_application: str = Field(default="", max_length=200)
    sender_facility: str = Field(default="", max_length=200)
    sender_key: str = Field(default="", max_length=400)
    control_id: str = Field(default="", max_length=200)
    message_type: str = Field(default="", max_length=40)
    message_time: str = Field(default="", max_length=40)
    outcome: str = Field(max_length=20)  # processed | warning | error | rejected | duplicate
    ack_code: str = Field(default="", max_length=2)
    accepted: bool = Field(default=False)
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    resources: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))
    raw: str = Field(sa_column=Column(Text, nullable=False))
    ack: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    replay_of: Optional[int] = Field(default=None)


class SourceWatermark(SQLModel, table=True):
    """The newest source-event time (MSH-7) that wrote each resource, so a late or
    resent older message never overwrites newer state (a no-show stays a no-show)."""

    __tablename__ = "source_watermarks"

    res_type: str = Field(primary_key=True, max_length=64)
    res_id: str = Field(primary_key=True, max_length=64)
    event_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class OutboxEvent(SQLModel, table=True):
    """Events written in the same transaction as the change that caused them; the
    notification worker delivers them after commit (nothing lost in between)."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index("ix_outbox_events_topic", "topic", "id"),
        # The delivery worker's queue: events not yet matched to subscriptions (notify/).
        Index("ix_outbox_events_pending", "id", sqlite_where=text("dispatched = 0"),
              postgresql_where=text("NOT dispatched")),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    created_at: str = Field(max_length=40)
    topic: str = Field(max_length=100)
    focus_type: str = Field(max_length=64)
    focus_id: str = Field(max_length=64)
    focus_version: int
    patient_id: str = Field(default="", max_length=64)
    payload: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    # Set once the delivery worker has matched the event to subscriptions (migration 0002).
    dispatched: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))



# --- Subscriptions (notify/; migration 0002) --------------------------------------------------

class SubscriptionState(SQLModel, table=True):
    """Delivery state of one Subscription: its secret (never in the resource), the
    parsed channel/filters, the event counter (gapless per subscription), how far
    delivery got, backoff, and which replica holds it (lease)."""

    __tablename__ = "subscription_state"
    __table_args__ = (Index("ix_subscription_state_status", "status"),)

    sub_id: str = Field(primary_key=True, max_length=64)
    topic: str = Field(max_length=100)
    status: str = Field(max_length=20)  # requested | active | error | off
    version_id: int = Field(default=1)
    secret: str = Field(default="", max_length=200)
    config: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    start_outbox_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    events_count: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    delivered_through: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    attempts: int = Field(default=0)
    failing_since_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    next_attempt_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    last_sent_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    last_error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    lease_owner: str = Field(default="", max_length=100)
    lease_until_us: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class SubscriptionEvent(SQLModel, table=True):
    """One event as numbered for one subscription (event-number 1, 2, 3 ... no gaps);
    kept so a receiver can replay a range with $events."""

    __tablename__ = "subscription_events"

    sub_id: str = Field(primary_key=True, max_length=64)
    event_number: int = Field(sa_column=Column(BigInteger, primary_key=True))
    outbox_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    topic: str = Field(max_length=100)
    occurred_at: str = Field(max_length=40)
    focus_type: str = Field(max_length=64)
    focus_id: str = Field(max_length=64)
    focus_version: int
    context: str = Field(default="[]", sa_column=Column(Text, nullable=False, server_default="[]"))


class DeliveryAttempt(SQLModel, table=True):
    """Every delivery attempt (handshake, heartbeat, notification): the searchable log."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (Index("ix_delivery_attempts_sub", "sub_id", "id"), Index("ix_delivery_attempts_at", "at_us"))

    id: Optional[int] = Field(default=None, primary_key=True)
    at: str = Field(max_length=40)
    at_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    sub_id: str = Field(max_length=64)
    kind: str = Field(max_length=30)  # handshake | heartbeat | event-notification
    first_event: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    last_event: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    http_status: int = Field(default=0)  # 0: no response (refused, timeout)
    latency_ms: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))
    outcome: str = Field(max_length=10)  # ok | failed
    error: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    replica: str = Field(default="", max_length=100)


class RulesSchedulerState(SQLModel, table=True):
    """The time-based rules' own bookkeeping (gateway/rules/scheduler.py): one row per
    job.  A run holds this row locked for its transaction (PostgreSQL: FOR UPDATE
    SKIP LOCKED), so two replicas never run it at once; the escalation levels
    themselves live on the Flags, so a restart picks up where the last run was."""

    __tablename__ = "rules_scheduler_state"

    name: str = Field(primary_key=True, max_length=64)
    last_run_at: str = Field(default="", max_length=40)  # wall clock of the last completed run
    last_as_of: str = Field(default="", max_length=40)  # the rules' clock of that run
    runs: int = Field(default=0)
    last_owner: str = Field(default="", max_length=200)  # host:pid of the process that ran it
    last_summary: str = Field(default="{}", sa_column=Column(Text, nullable=False, server_default="{}"))


metadata = SQLModel.metadata
