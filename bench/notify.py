"""Subscription delivery benchmark: MLLP no-shows -> outbox -> 50 rest-hook subscribers.

    python bench/notify.py                          # 50 subscriptions, 200 events/s, 60 s, SQLite
    python bench/notify.py --duration 20 --outage 10
    python bench/notify.py --database-url postgresql+psycopg://...

A real `gateway serve` process is started on a fresh database; a receiver (a small
asyncio HTTP/1.1 server with keep-alive, in its own process so it never competes
with the sender for the GIL) takes the notifications of 50 system-level
subscriptions to `appointment-noshow` (id-only, backport-max-count 100).  Four
MLLP connections send SIU^S26 no-shows (a new appointment each, so each is an
event) at the target rate.

Two phases, each `--duration` seconds:
1. steady: commit -> receipt latency p50/p99 (receipt time minus the event's
   timestamp, which is the start of the transaction that stored it: an upper
   bound of commit -> receipt) and throughput (notification events received/s);
2. outage: the receiver is down (connections refused) for `--outage` seconds in
   the middle; catch-up = time from the receiver's return until every
   subscription has every event that happened before it returned.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway import codes  # noqa: E402
from gateway.ingest.mllp_client import AsyncMllpClient  # noqa: E402
from gateway.notify.subscriptions import EXT_CONTENT, EXT_MAX_COUNT  # noqa: E402
from gateway.synthetic import make_child, siu_message  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the receiver (separate process) ----------------------------------------------------------
def _instant_to_epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Http(asyncio.Protocol):
    def __init__(self, sink: list, conns: set) -> None:
        self.sink, self.conns, self.buf, self.transport = sink, conns, bytearray(), None

    def connection_made(self, transport) -> None:  # noqa: ANN001
        self.transport = transport
        self.conns.add(transport)

    def connection_lost(self, _exc) -> None:  # noqa: ANN001
        self.conns.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            for line in head.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if len(self.buf) < end + 4 + length:
                return
            body = bytes(self.buf[end + 4:end + 4 + length])
            del self.buf[:end + 4 + length]
            now = time.time()
            bundle = orjson.loads(body)
            params = bundle["entry"][0]["resource"]["parameter"]
            sub = next(p["valueReference"]["reference"] for p in params if p["name"] == "subscription")
            for p in params:
                if p["name"] == "notification-event":
                    parts = {x["name"]: x for x in p["part"]}
                    self.sink.append((sub.rsplit("/", 1)[-1], int(parts["event-number"]["valueString"]),
                                      _instant_to_epoch(parts["timestamp"]["valueInstant"]), now))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def receiver_process(port: int, control, results) -> None:  # noqa: ANN001
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sink: list = []
        conns: set = set()
        server = await loop.create_server(lambda: _Http(sink, conns), "127.0.0.1", port, reuse_address=True)
        while True:
            command = await loop.run_in_executor(None, control.get)
            if command == "down":
                server.close()
                for t in list(conns):
                    t.abort()
                await server.wait_closed()
            elif command == "up":
                server = await loop.create_server(lambda: _Http(sink, conns), "127.0.0.1", port, reuse_address=True)
            elif command == "collect":
                results.put(list(sink))
                sink.clear()
            elif command == "stop":
                return

    asyncio.run(main())


# --- the gateway and the load -----------------------------------------------------------------
def start_gateway(database_url: str) -> tuple[subprocess.Popen, int, int]:
    mllp_port, http_port = free_port(), free_port()
    env = {**os.environ, "GATEWAY_DATABASE_URL": database_url, "GATEWAY_MLLP_PORT": str(mllp_port),
           "GATEWAY_HTTP_PORT": str(http_port), "GATEWAY_LOG_LEVEL": "warning",
           "GATEWAY_DELIVERY_RETRY_MAX_SECONDS": os.environ.get("GATEWAY_DELIVERY_RETRY_MAX_SECONDS", "2")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env=env, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return proc, mllp_port, http_port
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("gateway did not start")


def make_subscriptions(http_port: int, receiver_url: str, count: int, max_count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30) as client:
        for i in range(count):
            body = {"resourceType": "Subscription", "status": "requested", "reason": f"bench {i}",
                    "criteria": f"{codes.TOPIC_BASE}/{codes.TOPIC_APPOINTMENT_NOSHOW}",
                    "extension": [{"url": codes.EXT_SUBSCRIPTION_SECRET, "valueString": f"bench-secret-{i:04d}-xxxx"}],
                    "channel": {"type": "rest-hook", "endpoint": f"{receiver_url}/{i}", "payload": "application/fhir+json",
                                "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": "id-only"}]},
                                "extension": [{"url": EXT_MAX_COUNT, "valuePositiveInt": max_count}]}}
            response = client.post("/fhir/Subscription", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
        deadline = time.time() + 30
        while time.time() < deadline:
            statuses = {client.get(f"/fhir/Subscription/{i}").json()["status"] for i in ids}
            if statuses == {"active"}:
                return ids
            time.sleep(0.2)
    raise SystemExit(f"subscriptions did not become active: {statuses}")


async def send_noshows(port: int, rate: float, duration: float, offset: int, on_tick=None) -> int:  # noqa: ANN001
    """S26 for a new appointment each (an event each), paced over 4 connections."""
    connections = 4
    per_conn = rate / connections
    total = int(rate * duration)
    sent = 0
    start = time.perf_counter()

    async def one(conn_no: int) -> None:
        nonlocal sent
        async with AsyncMllpClient("127.0.0.1", port, timeout=60) as client:
            for k in range(conn_no, total, connections):
                due = start + (k // connections) / per_conn
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                n = offset + k
                child = make_child(n % 5000)
                msg = siu_message(child, 100 + n // 5000, "S26", control_id=f"NB{n:09d}",
                                  when=datetime(2025, 3, 1, 9) + timedelta(minutes=n),
                                  sent=datetime(2025, 1, 1) + timedelta(seconds=n))
                ack = await client.send(msg)
                if "MSA|AA" not in ack:
                    raise SystemExit(f"not accepted: {ack!r}")
                sent += 1

    ticker = asyncio.create_task(on_tick(start)) if on_tick else None
    await asyncio.gather(*(one(c) for c in range(connections)))
    if ticker:
        await ticker
    return sent


def cpu_seconds(pid: int) -> float:
    """user+system CPU seconds of one process (Linux /proc), 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def process_tree(gateway_pid: int, receiver_pid: int) -> dict[str, int]:
    """Who competes for the CPUs: the gateway, its delivery child, the receiver, this sender."""
    pids = {"gateway (ingest)": gateway_pid, "receiver": receiver_pid, "bench sender": os.getpid()}
    try:
        for child in Path(f"/proc/{gateway_pid}/task/{gateway_pid}/children").read_text().split():
            if "gateway.notify.process" in Path(f"/proc/{child}/cmdline").read_text():
                pids["delivery process"] = int(child)
    except OSError:
        pass
    return pids


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def wait_all(control, results, expected: int, subs: int, timeout: float) -> list:  # noqa: ANN001
    """Collect until every subscription has ``expected`` events (or timeout)."""
    got: list = []
    counts: dict[str, set] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        control.put("collect")
        batch = results.get()
        got += batch
        for sub, number, _ts, _rx in batch:
            counts.setdefault(sub, set()).add(number)
        if len(counts) == subs and all(len(v) >= expected for v in counts.values()):
            break
        time.sleep(0.5)
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscriptions", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="no-shows per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--outage", type=float, default=30.0, help="receiver down this long in phase 2")
    parser.add_argument("--max-count", type=int, default=100, help="backport-max-count of each subscription")
    parser.add_argument("--database-url", default="")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="gw-notify-bench-")
    database_url = args.database_url or f"sqlite:///{tmp}/bench.db"
    receiver_port = free_port()
    ctx = multiprocessing.get_context("spawn")
    control, results = ctx.Queue(), ctx.Queue()
    receiver = ctx.Process(target=receiver_process, args=(receiver_port, control, results), daemon=True)
    receiver.start()
    proc, mllp_port, http_port = start_gateway(database_url)
    report: dict = {"subscriptions": args.subscriptions, "rate": args.rate, "duration": args.duration,
                    "database": "postgresql" if "postgres" in database_url else "sqlite"}
    try:
        make_subscriptions(http_port, f"http://127.0.0.1:{receiver_port}/hook", args.subscriptions, args.max_count)
        control.put("collect")
        results.get()  # drop handshakes (none are events anyway)
        pids = process_tree(proc.pid, receiver.pid)
        cpu_start = {name: cpu_seconds(pid) for name, pid in pids.items()}
        wall_start = time.time()

        # Phase 1: steady state.
        t0 = time.time()
        sent = asyncio.run(send_noshows(mllp_port, args.rate, args.duration, 0))
        send_seconds = time.time() - t0
        rows = wait_all(control, results, sent, args.subscriptions, 60)
        last_rx = max(r[3] for r in rows)
        latencies = [(rx - ts) * 1000 for _s, _n, ts, rx in rows]
        report["steady"] = {
            "events": sent, "send_rate": round(sent / send_seconds, 1), "deliveries": len(rows),
            "throughput_per_s": round(len(rows) / (last_rx - t0), 1),
            "latency_ms_p50": round(pct(latencies, 0.50), 1), "latency_ms_p99": round(pct(latencies, 0.99), 1),
            "latency_ms_max": round(max(latencies), 1)}

        # Phase 2: the receiver goes away for --outage seconds in the middle.
        marks: dict[str, float] = {}

        async def outage(start: float) -> None:
            down_at = start + (args.duration - args.outage) / 2
            await asyncio.sleep(max(0.0, down_at - time.perf_counter()))
            control.put("down")
            marks["down"] = time.time()
            await asyncio.sleep(args.outage)
            control.put("up")
            marks["up"] = time.time()

        t0 = time.time()
        sent2 = asyncio.run(send_noshows(mllp_port, args.rate, args.duration, sent, on_tick=outage))
        rows2 = wait_all(control, results, sent + sent2, args.subscriptions, 120)
        # Events that happened before the receiver came back: all must arrive; when did the last one?
        before_up = [r for r in rows2 if r[2] <= marks["up"]]
        per_sub_last: dict[str, float] = {}
        for sub, _n, _ts, rx in before_up:
            per_sub_last[sub] = max(per_sub_last.get(sub, 0.0), rx)
        catch_up = max(per_sub_last.values()) - marks["up"] if per_sub_last else float("nan")
        counts: dict[str, list[int]] = {}
        for sub, n, _ts, _rx in rows + rows2:
            counts.setdefault(sub, []).append(n)
        complete = all(sorted(set(v)) == list(range(1, sent + sent2 + 1)) for v in counts.values())
        duplicates = sum(len(v) - len(set(v)) for v in counts.values())
        after = [(rx - ts) * 1000 for _s, _n, ts, rx in rows2 if ts > marks["up"] + catch_up]
        report["outage"] = {
            "events": sent2, "outage_s": args.outage, "catch_up_s": round(catch_up, 2),
            "backlog_events_per_subscription": sum(1 for r in before_up if r[2] >= marks["down"]) // max(1, len(per_sub_last)),
            "complete_and_gapless": complete, "duplicates": duplicates,
            "latency_ms_p50_after_catch_up": round(pct(after, 0.5), 1),
            "latency_ms_p99_after_catch_up": round(pct(after, 0.99), 1)}
        wall = time.time() - wall_start
        # Share of one core each process used over both phases (2 cores = 200 % in all).
        report["cpu_percent_of_one_core"] = {name: round((cpu_seconds(pid) - cpu_start[name]) / wall * 100)
                                             for name, pid in pids.items()}
        with open("/proc/loadavg") as f:
            report["loadavg_at_end"] = f.read().split()[:3]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        control.put("stop")
        receiver.join(5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
