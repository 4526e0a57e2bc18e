"""The ``gateway`` command: serve, convert, send, reprocess, import."""

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


@main.command(name="import")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--database-url", default=None, help="[GATEWAY_DATABASE_URL]")
@click.option("--source", default=None,
              help="Where the records come from (a URI or a name); default: Bundle.meta.source, the practice's "
                   "ODS code, or the file/folder name")
@click.option("--fhir-version", default=None, help="STU3 or R4 (3.0.x / 4.0.x); default: detected")
@click.option("--batch-size", type=int, default=500, show_default=True, help="NDJSON lines per transaction")
@click.option("--quiet", is_flag=True, help="No progress bar")
def import_(path: Path, database_url: str | None, source: str | None, fhir_version: str | None,
            batch_size: int, quiet: bool) -> None:
    """Import GP records: a Bundle (GP Connect STU3 or R4) or NDJSON (a file or a folder).

    Safe while `gateway serve` runs on the same database (short transactions)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gateway.gprecords import ndjson
    from gateway.gprecords.detect import ImportFormatError, shape_of
    from gateway.gprecords.importer import Importer
    from gateway.settings import use_settings
    from gateway.store.database import make_engine, migrate

    settings = _settings(database_url=database_url)
    use_settings(settings)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        shape = shape_of(path)
        files = ndjson.files_in(path) if shape.kind == "folder" else [path]
        total = sum(ndjson.count_lines(f) for f in files) if shape.kind != "bundle" else None
        with Progress(TextColumn("importing {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), disable=quiet, transient=False) as bar:
            task = bar.add_task(path.name, total=total)
            with Importer(engine, source=source, fhir_version=fhir_version, batch_size=batch_size) as importer:
                report = importer.import_path(path, lambda n: bar.advance(task, n))
    except ImportFormatError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    for problem in report.problems:
        click.echo(f"error {problem.text()}" + (f" [{', '.join(problem.expression)}]" if problem.expression else ""),
                   err=True)
    if report.error_count > len(report.problems):
        click.echo(f"... and {report.error_count - len(report.problems)} more errors", err=True)
    for match in report.matches:
        if match.outcome == "not-merged":
            click.echo(f"warning {match.source} -> {match.patient}: not merged: {match.reason}", err=True)
    for rtype, n in sorted(report.skipped_types.items()):
        click.echo(f"skipped {n} {rtype} (not kept by the gateway)", err=True)
    if report.rejected:
        click.echo("the Bundle was rejected: nothing was written", err=True)
    click.echo(f"{report.summary()}; source {report.source}")
    sys.exit(1 if report.error_count else 0)


@main.group()
def rules() -> None:
    """Safeguarding rules (profiles/safeguarding-rules.yaml; docs/rules.md)."""


@rules.command(name="run")
@click.option("--as-of", "as_of", default=None,
              help="The rules' clock, ISO 8601 (e.g. 2026-03-01T09:00:00Z; no offset = UTC) [now]")
@click.option("--database-url", default=None, help="[GATEWAY_DATABASE_URL]")
def rules_run(as_of: str | None, database_url: str | None) -> None:
    """Run the time-based rules once (R7 drift, Flags aging out) and print what they did (JSON)."""
    from datetime import datetime, timezone

    from gateway.rules.config import RulesConfigError
    from gateway.rules.scheduler import run_once
    from gateway.settings import use_settings
    from gateway.store.database import make_engine, migrate

    clock = None
    if as_of:
        try:
            clock = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{as_of!r} is not an ISO 8601 date-time", param_hint="--as-of") from None
        clock = clock if clock.tzinfo else clock.replace(tzinfo=timezone.utc)
    settings = _settings(database_url=database_url)
    use_settings(settings)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url, pool_size=2)
    try:
        summary = run_once(engine, as_of=clock, rules_file=settings.rules_file)
    except RulesConfigError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
