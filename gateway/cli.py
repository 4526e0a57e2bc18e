"""The ``gateway`` command: serve, convert, send, reprocess."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import click
import orjson

from gateway.settings import Settings


def _settings(**overrides: object) -> Settings:
    """Environment (GATEWAY_*) first, then any flag the user actually gave."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


@click.group()
@click.version_option(package_name="fhir-safeguarding-gateway")
def main() -> None:
    """FHIR safeguarding gateway: HL7 v2 feeds and GP records in, FHIR R4 out."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [GATEWAY_HOST, 127.0.0.1]")
@click.option("--http-port", type=int, default=None, help="FHIR/HTTP port [GATEWAY_HTTP_PORT, 8080]")
@click.option("--mllp-port", type=int, default=None, help="MLLP port [GATEWAY_MLLP_PORT, 2575]")
@click.option("--database-url", default=None,
              help="sqlite:///./gateway.db or postgresql+psycopg://... [GATEWAY_DATABASE_URL]")
@click.option("--log-level", default=None, help="debug|info|warning [GATEWAY_LOG_LEVEL, info]")
def serve(host: str | None, http_port: int | None, mllp_port: int | None, database_url: str | None,
          log_level: str | None) -> None:
    """Serve FHIR over HTTP and HL7 v2 over MLLP in one process."""
    from gateway.app import serve as run

    settings = _settings(host=host, http_port=http_port, mllp_port=mllp_port, database_url=database_url,
                         log_level=log_level)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop  # noqa: F401 - faster event loop where available

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(settings))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def convert(file: Path) -> None:
    """Print the FHIR transaction Bundle for each message in FILE (no database)."""
    from gateway.hl7v2.parser import ParseError, parse_message, split_batch
    from gateway.mapping.bundle import to_transaction_bundle
    from gateway.mapping.engine import MappingEngine
    from gateway.mapping.model import MappingError

    settings = Settings()
    engine = MappingEngine(settings.mappings_dir, settings.default_timezone)
    failures = 0
    for text in split_batch(file.read_bytes()):
        try:
            result = engine.map(parse_message(text))
        except (ParseError, MappingError) as exc:
            failures += 1
            click.echo(f"error: {exc}", err=True)
            continue
        for issue in result.issues:
            where = f"{issue.segment}-{issue.field}" if issue.field else issue.segment
            click.echo(f"{issue.severity} {where}: {issue.text}", err=True)
        if result.errors:  # ingest would answer AE and store nothing: print no Bundle either
            failures += 1
            continue
        click.echo(orjson.dumps(to_transaction_bundle(result), option=orjson.OPT_INDENT_2).decode())
    sys.exit(1 if failures else 0)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=2575, show_default=True)
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for each ACK")
def send(file: Path, host: str, port: int, timeout: float) -> None:
    """Send each message in FILE over MLLP and print each ACK."""
    from gateway.hl7v2.ack import ack_code_of
    from gateway.hl7v2.parser import split_batch
    from gateway.ingest.mllp_client import MllpClient

    messages = split_batch(file.read_bytes())
    if not messages:
        raise click.ClickException(f"{file} holds no HL7 v2 message (no MSH segment)")
    not_accepted = 0
    with MllpClient(host, port, timeout=timeout) as client:
        for text in messages:
            ack = client.send(text)
            click.echo(ack.replace("\r", "\n").rstrip("\n"))
            click.echo("")
            if ack_code_of(ack) not in ("AA", "CA"):
                not_accepted += 1
    click.echo(f"sent {len(messages)} message(s); {len(messages) - not_accepted} accepted", err=True)
    sys.exit(1 if not_accepted else 0)


@main.command()
@click.argument("message_id", type=int)
@click.option("--database-url", default=None, help="[GATEWAY_DATABASE_URL]")
def reprocess(message_id: int, database_url: str | None) -> None:
    """Process a logged message again (after fixing a mapping or sender config)."""
    from gateway.app import Runtime
    from gateway.hl7v2.parser import encode_as_declared
    from gateway.ingest.processor import Inbound
    from gateway.store.reading import read_only

    runtime = Runtime(_settings(database_url=database_url))
    runtime.start()
    try:
        with read_only(runtime.engine) as uow:
            row = uow.fetchone("SELECT raw FROM message_log WHERE id=?", (message_id,))
        if row is None:
            raise click.ClickException(f"message {message_id} is not in the log")
        result = runtime.writer.process_now(Inbound(encode_as_declared(row[0]), "reprocess", "cli",
                                                    replay_of=message_id))
    finally:
        runtime.stop()
    click.echo(result.ack.replace("\r", "\n").rstrip("\n"))
    click.echo(f"outcome: {result.outcome}; log id {result.log_id}; resources: {', '.join(result.touched) or '-'}",
               err=True)
    sys.exit(0 if result.ack_code in ("AA", "CA") else 1)


if __name__ == "__main__":
    main()
