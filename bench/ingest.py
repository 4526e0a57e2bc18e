"""Ingest benchmark: generated SIU messages over MLLP, end to end into the database.

    python bench/ingest.py                      # 20,000 messages, 2,000 children, 4 connections, SQLite
    python bench/ingest.py --messages 5000 --database-url postgresql+psycopg://...

A real `gateway serve` process is started on a fresh database; 4 concurrent MLLP
connections each send their share, waiting for every ACK (as a PAS does).  Each
child's messages go down one connection, in feed order.  In the same run, as the
baseline the figures are compared against, python-hl7's parse-only rate over the
same messages (and this project's parser's) is measured.

Prints messages/s, ACK latency p50/p99, the server's peak RSS, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.hl7v2.parser import parse_message  # noqa: E402
from gateway.ingest.mllp_client import AsyncMllpClient  # noqa: E402
from gateway.synthetic import siu_mix  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gateway(database_url: str, env_extra: dict[str, str]) -> tuple[subprocess.Popen, int, int]:
    mllp_port, http_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_MLLP_PORT": str(mllp_port),
           "GATEWAY_HTTP_PORT": str(http_port), "GATEWAY_LOG_LEVEL": "warning", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", mllp_port), timeout=0.5).close()
            return proc, mllp_port, http_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gateway did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_rates(messages: list[str]) -> dict[str, float]:
    import hl7  # python-hl7, the baseline

    rates = {}
    for name, parse in (("python-hl7", hl7.parse), ("gateway parser", parse_message)):
        start = time.perf_counter()
        for message in messages:
            parse(message)
        rates[name] = len(messages) / (time.perf_counter() - start)
    return rates


def partition(messages: list[str], connections: int) -> list[list[str]]:
    """Each child's messages on one connection, in order (a PAS keeps a patient's order)."""
    shares: list[list[str]] = [[] for _ in range(connections)]
    for message in messages:
        pid = message.split("\rPID|", 1)[1].split("|", 3)[2]
        shares[zlib.crc32(pid.encode()) % connections].append(message)
    return shares


async def run_connection(port: int, messages: list[str], latencies: list[float]) -> int:
    not_accepted = 0
    async with AsyncMllpClient("127.0.0.1", port, timeout=60) as client:
        for message in messages:
            start = time.perf_counter()
            ack = await client.send(message)
            latencies.append(time.perf_counter() - start)
            if "MSA|AA|" not in ack:
                not_accepted += 1
    return not_accepted


async def drive(port: int, shares: list[list[str]]) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    start = time.perf_counter()
    results = await asyncio.gather(*(run_connection(port, share, latencies) for share in shares))
    return time.perf_counter() - start, latencies, sum(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--children", type=int, default=2_000)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--no-rules", action="store_true",
                        help="run with the safeguarding rules off (GATEWAY_RULES_ENABLED=false)")
    parser.add_argument("--compare-rules", action="store_true",
                        help="SQLite: also run the same feed with the rules off (fresh database) and report "
                             "the rules' cost")
    args = parser.parse_args()
    if args.compare_rules and args.database_url:
        parser.error("--compare-rules uses two fresh SQLite databases; leave --database-url out")

    messages = siu_mix(args.children, args.messages, seed=11)
    rates = parse_rates(messages)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{tmp}/bench.db"
        baseline = None
        if args.compare_rules:  # rules off first, on its own fresh database, same feed
            off_url = f"sqlite:///{tmp}/bench-rules-off.db"
            proc, mllp_port, _http = start_gateway(off_url, {"GATEWAY_RULES_ENABLED": "false"})
            try:
                off_elapsed, _lat, _na = asyncio.run(drive(mllp_port, partition(messages, args.connections)))
            finally:
                proc.terminate()
                proc.wait(60)
            baseline = len(messages) / off_elapsed
        proc, mllp_port, _http = start_gateway(url, {"GATEWAY_RULES_ENABLED": "false"} if args.no_rules else {})
        try:
            elapsed, latencies, not_accepted = asyncio.run(drive(mllp_port, partition(messages,
                                                                                       args.connections)))
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)

    latencies.sort()
    throughput = len(messages) / elapsed
    figures = {
        "messages": len(messages),
        "connections": args.connections,
        "database": "postgresql" if url.startswith("postgres") else "sqlite",
        "elapsed_s": round(elapsed, 2),
        "messages_per_s": round(throughput),
        "ack_latency_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "ack_latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "server_peak_rss_mb": round(rss, 1),
        "not_accepted": not_accepted,
        "python_hl7_parse_only_per_s": round(rates["python-hl7"]),
        "gateway_parser_parse_only_per_s": round(rates["gateway parser"]),
        "end_to_end_vs_python_hl7_parse_only": round(throughput / rates["python-hl7"], 2),
        "rules": "off" if args.no_rules else "on",
    }
    if baseline is not None:
        figures["rules_off_messages_per_s"] = round(baseline)
        figures["rules_cost_pct_of_throughput"] = round((1 - throughput / baseline) * 100, 1)
    for key, value in figures.items():
        print(f"{key:40s} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if not_accepted:
        raise SystemExit(f"{not_accepted} messages were not accepted")


if __name__ == "__main__":
    main()
