"""Throughput of each HTTP channel against its local fake vendor server.

Run: ``.venv/bin/python tests/bench/http_channels_bench.py [--count N] [--threads T]``

Each channel's ``send()`` is called from T threads (default 50) sharing one
channel instance, so one pooled HTTP client, as a queue worker with that
many slots would. The fake servers run in a separate process so their
request parsing does not compete with the senders for the GIL. Prints
deliveries per second and per-call p50/p99 latency for each channel.

This is a script that prints figures, not a timed test: nothing fails on a
number.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.connection
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from channels_support import (
    FakeDiscord,
    FakeFcm,
    FakeServer,
    FakeSlack,
    FakeTeams,
    FakeTwilio,
    FakeWebhookReceiver,
    make_message,
    service_account,
)

from chimeway.channels.base import Channel
from chimeway.values import Message, Recipient

WEBHOOK_KEY = b"bench-secret-bench-secret-bench!"
PROJECT = "chimeway-bench"


def serve(conn: multiprocessing.connection.Connection) -> None:
    """Child process: start every fake, report their addresses, wait for 'stop'."""
    fakes: list[FakeServer] = []

    def keep(fake: Any) -> Any:
        fake.record = False
        fakes.append(fake)
        return fake

    account, public_key = service_account("placeholder", PROJECT)
    fcm = keep(FakeFcm(PROJECT, account["client_email"], public_key))
    account, _ = service_account(fcm.token_url, PROJECT)
    webhook = keep(FakeWebhookReceiver(WEBHOOK_KEY))
    slack = keep(FakeSlack())
    discord = keep(FakeDiscord())
    teams = keep(FakeTeams())
    twilio = keep(FakeTwilio())
    conn.send(
        {
            "webhook": webhook.url,
            "slack_hook": slack.webhook_url,
            "slack_api": slack.api_url,
            "discord": discord.webhook_url,
            "teams": teams.webhook_url,
            "twilio": twilio.base_url,
            "fcm": fcm.base_url,
            "account": account,
        }
    )
    while conn.recv() == "cpu":
        conn.send(time.process_time())
    for fake in fakes:
        fake.close()


def channels(urls: dict[str, Any]) -> list[tuple[str, Channel, dict[str, Any]]]:
    from chimeway.channels.discord import Discord
    from chimeway.channels.push import Push
    from chimeway.channels.slack import Slack
    from chimeway.channels.sms import Sms
    from chimeway.channels.teams import Teams
    from chimeway.channels.webhook import Webhook

    return [
        ("webhook", Webhook(urls["webhook"], secret=WEBHOOK_KEY), {"body": "order 7 shipped"}),
        ("slack (incoming webhook)", Slack(webhook_url=urls["slack_hook"]), {"text": "order 7"}),
        (
            "slack (chat.postMessage)",
            Slack(token=FakeSlack.token, channel="C0123", base_url=urls["slack_api"]),
            {"text": "order 7"},
        ),
        ("discord", Discord(urls["discord"]), {"text": "order 7 shipped"}),
        ("teams", Teams(urls["teams"]), {"title": "Order 7", "body": "shipped"}),
        (
            "sms (twilio)",
            Sms(
                FakeTwilio.account_sid,
                FakeTwilio.auth_token,
                from_="+15017122661",
                base_url=urls["twilio"],
            ),
            {"body": "Your order shipped"},
        ),
        (
            "push (fcm v1)",
            Push(urls["account"], base_url=urls["fcm"]),
            {"title": "Order 7", "body": "shipped"},
        ),
    ]


def run_one(
    channel: Channel,
    fields: dict[str, Any],
    count: int,
    threads: int,
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    recipient = Recipient(id="user:42", phone="+15005550006", push_tokens=("device-token-bench01",))
    messages: list[Message] = [
        make_message("bench", fields, recipient=recipient) for _ in range(count)
    ]
    latencies: list[float] = [0.0] * count
    failures: dict[str, int] = {}

    def one(i: int) -> None:
        started = time.perf_counter()
        result = channel.send(messages[i])
        latencies[i] = time.perf_counter() - started
        if result.outcome != "succeeded":
            key = f"{result.outcome}:{result.error_class}"
            failures[key] = failures.get(key, 0) + 1

    with ThreadPoolExecutor(threads) as pool:
        # Warm up: open the pooled connections (and fetch the FCM token) untimed.
        list(pool.map(lambda _: channel.send(messages[0]), range(threads * 2)))
        began = time.perf_counter()
        cpu_client, cpu_server = time.process_time(), server_cpu()
        list(pool.map(one, range(count)))
        elapsed = time.perf_counter() - began
        cpu_client, cpu_server = time.process_time() - cpu_client, server_cpu() - cpu_server
    ordered = sorted(latencies)
    return {
        "rate": count / elapsed,
        "elapsed": elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(count - 1, int(count * 0.99))] * 1000,
        "failures": failures,
        "client_us": cpu_client / count * 1e6,
        "server_us": cpu_server / count * 1e6,
    }


def run_one_async(
    channel: Channel,
    fields: dict[str, Any],
    count: int,
    tasks: int,
    server_cpu: Callable[[], float],
) -> dict[str, Any]:
    """The same load through ``send_async`` from ``tasks`` coroutines on one event loop."""
    recipient = Recipient(id="user:42", phone="+15005550006", push_tokens=("device-token-bench01",))
    messages = [make_message("bench", fields, recipient=recipient) for _ in range(count)]
    latencies: list[float] = [0.0] * count
    failures: dict[str, int] = {}

    async def worker(indexes: range) -> None:
        for i in indexes:
            started = time.perf_counter()
            result = await channel.send_async(messages[i])
            latencies[i] = time.perf_counter() - started
            if result.outcome != "succeeded":
                key = f"{result.outcome}:{result.error_class}"
                failures[key] = failures.get(key, 0) + 1

    async def run() -> tuple[float, float, float]:
        await asyncio.gather(*(channel.send_async(messages[0]) for _ in range(tasks * 2)))
        began = time.perf_counter()
        cpu_client, cpu_server = time.process_time(), server_cpu()
        await asyncio.gather(*(worker(range(t, count, tasks)) for t in range(tasks)))
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_client, server_cpu() - cpu_server
        client = getattr(channel, "async_client", None)
        if client is not None:
            await client.aclose()
        return elapsed, cpu[0], cpu[1]

    elapsed, cpu_client, cpu_server = asyncio.run(run())
    ordered = sorted(latencies)
    return {
        "rate": count / elapsed,
        "elapsed": elapsed,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(count - 1, int(count * 0.99))] * 1000,
        "failures": failures,
        "client_us": cpu_client / count * 1e6,
        "server_us": cpu_server / count * 1e6,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=5000, help="deliveries per channel")
    parser.add_argument("--threads", type=int, default=50, help="concurrent sender threads")
    parser.add_argument("--only", help="run only channels whose name contains this")
    parser.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="also measure send_async() from --threads coroutines on one event loop",
    )
    args = parser.parse_args(argv)

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=serve, args=(child,), daemon=True)
    server.start()
    urls = parent.recv()
    print(
        f"channel.send() called directly from {args.threads} threads (no database, planning or "
        "job claiming; tests/bench/e2e_webhook_bench.py measures the whole path through the "
        "queue); fake vendor servers on 127.0.0.1 in a separate process."
    )
    print(f"{args.count} deliveries per channel, {args.threads} threads; goal >= 1000/s")
    print("CPU us = CPU microseconds per delivery spent by the senders / by the fake servers")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load} (other work competes for the CPUs)\n"
    )

    def server_cpu() -> float:
        parent.send("cpu")
        return float(parent.recv())

    header = (
        f"{'channel':<26} {'deliveries/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'seconds':>8} "
        f"{'client CPU us':>13} {'server CPU us':>13}  failures"
    )
    print(header)
    print("-" * len(header))
    try:
        for name, channel, fields in channels(urls):
            if args.only and args.only not in name:
                continue
            figures = run_one(channel, fields, args.count, args.threads, server_cpu)
            failures = ", ".join(f"{k}={v}" for k, v in figures["failures"].items()) or "0"
            print(
                f"{name:<26} {figures['rate']:>12.0f} {figures['p50']:>8.1f} {figures['p99']:>8.1f} "
                f"{figures['elapsed']:>8.2f} {figures['client_us']:>13.0f} {figures['server_us']:>13.0f}  "
                f"{failures}",
                flush=True,
            )
            if args.use_async:
                figures = run_one_async(channel, fields, args.count, args.threads, server_cpu)
                failures = ", ".join(f"{k}={v}" for k, v in figures["failures"].items()) or "0"
                label = f"  {name.split()[0]} send_async"
                print(
                    f"{label:<26} {figures['rate']:>12.0f} {figures['p50']:>8.1f} {figures['p99']:>8.1f} "
                    f"{figures['elapsed']:>8.2f} {figures['client_us']:>13.0f} "
                    f"{figures['server_us']:>13.0f}  {failures}",
                    flush=True,
                )
            channel.close()
    finally:
        parent.send("stop")
        server.join(timeout=5)


if __name__ == "__main__":
    main()
