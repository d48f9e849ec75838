"""SMTP throughput: messages/s from 8 threads to a local aiosmtpd, with p50/p99 latency.

Run: ``.venv/bin/python tests/bench/smtp_bench.py [--messages 2000] [--threads 8]``

Each thread reuses its own SMTP connection (as a worker thread would). The
run is bounded by a message count and a time cap, talks only to 127.0.0.1,
and prints figures; it is not a test and asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from email_support import make_message, smtp_server

from chimeway.channels.email import SMTP, Email


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="total messages to send")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop early after this long"
    )
    args = parser.parse_args()

    per_thread = args.messages // args.threads
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    with smtp_server() as server:
        channel = Email(
            SMTP(server.host, server.port, starttls=False, timeout=10),
            from_="Bench <bench@shop.example>",
        )
        messages = [
            make_message(
                {
                    "subject": f"Bench {i}",
                    "text": "Plain body " * 20,
                    "html": "<p>HTML body</p>" * 20,
                }
            )
            for i in range(per_thread * args.threads)
        ]
        deadline = time.monotonic() + args.max_seconds
        start_gate = threading.Barrier(args.threads + 1)

        def worker(chunk: list) -> None:  # type: ignore[type-arg]
            mine: list[float] = []
            start_gate.wait()
            for message in chunk:
                if time.monotonic() > deadline:
                    break
                began = time.perf_counter()
                result = channel.send(message)
                mine.append(time.perf_counter() - began)
                if result.outcome != "succeeded":
                    with lock:
                        failures.append(result.detail or result.outcome)
            with lock:
                latencies.extend(mine)

        threads = [
            threading.Thread(target=worker, args=(messages[i * per_thread : (i + 1) * per_thread],))
            for i in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        start_gate.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        channel.close()
        received = len(server.handler.received)

    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(
        f"threads={args.threads} sent={len(latencies)} received={received} failures={len(failures)}"
    )
    print(f"elapsed={elapsed:.2f}s throughput={len(latencies) / elapsed:.0f} msg/s")
    print(f"latency p50={p50:.2f}ms p99={p99:.2f}ms max={latencies[-1] * 1000:.2f}ms")
    if failures:
        print("first failure:", failures[0])


if __name__ == "__main__":
    main()
