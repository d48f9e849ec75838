"""Real brokers and real Celery worker processes for the Celery dispatcher's proofs.

RabbitMQ (127.0.0.1:5672, guest/guest) and Redis (127.0.0.1:6379) run on
the development machine and in CI. Where one does not answer, its tests skip
with a message, except under ``CI=true``, where they fail.

Every process of a proof builds the same app with :func:`make_app` — the test
process to commit deliveries, each Celery worker (``celery -A
celery_worker_app``) and ``chimeway worker`` to run tasks and the relay —
configured through ``CW_*`` environment variables. Each proof uses Celery
queues of its own, deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from spooled import Spooled

from chimeway import Chimeway, Notifier, Recipient
from chimeway.channels import Webhook
from chimeway.db import create_engine
from chimeway.dispatch.celery import CeleryDispatcher
from chimeway.workflow import deliver, wait

HERE = Path(__file__).resolve().parent
SECRET = "whsec_" + "Y2VsZXJ5LXByb29mLWNlbGVyeS1wcm9vZg=="
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"
REDIS = "redis://127.0.0.1:6379/0"


class CeleryHook(Notifier):
    key = "celery_proof_hook"
    channels = ["webhook"]
    templates = {"webhook": {"body": "event {{ n }}"}}

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"user:{params['n']}:{i}") for i in range(int(params.get("fanout", 10)))]


class CeleryJourney(Notifier):
    """A timer (1.5 s, fired through Celery) then a wait for the ``go`` signal (routed through Celery)."""

    key = "celery_proof_journey"
    channels = ["webhook"]
    templates = {"webhook": {"body": "journey {{ n }}"}}
    workflow = [deliver("webhook"), wait(seconds=1.5), deliver("webhook"), wait(until="go"), deliver("webhook")]

    def recipients(self, params: Mapping[str, Any]) -> list[Recipient]:
        return [Recipient(id=f"walker:{params['n']}")]


# --- brokers ------------------------------------------------------------------------------------


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_broker(url: str) -> str:
    """``url`` if its broker answers; otherwise skip (fail under ``CI=true``)."""
    port = 5672 if url.startswith("amqp") else 6379
    if answers("127.0.0.1", port):
        return url
    message = f"no broker answers at {url.split('@')[-1]}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must run RabbitMQ and Redis (.ci/run starts them)")
    pytest.skip(message + "; the Celery proofs on this broker are skipped")


def message_count(broker: str, queue: str) -> int:
    """Messages waiting in a Celery queue (none consumed)."""
    app = Celery("chimeway_probe", broker=broker)
    with app.connection_for_read() as conn:
        if broker.startswith("redis"):
            return int(conn.default_channel.client.llen(queue))
        try:
            return int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
        except Exception:  # not declared yet: nothing was ever published to it
            return 0


def drain_ids(broker: str, queue: str) -> list[str]:
    """Take every message off a queue; returns their task ids (in order)."""
    app = Celery("chimeway_probe", broker=broker)
    ids: list[str] = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        while True:
            try:
                message = simple.get(timeout=0.5)
            except simple.Empty:
                break
            ids.append(str(message.headers["id"]))
            message.ack()
        simple.close()
    return ids


def delete_queues(broker: str, *queues: str) -> None:
    app = Celery("chimeway_probe", broker=broker)
    try:
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in queues:
                if broker.startswith("redis"):
                    channel.client.delete(name)
                else:
                    channel.queue_delete(queue=name)
    except Exception:
        pass  # a broker stopped by the test: nothing to clean


class ThrowawayRedis:
    """A redis-server of our own on a free port, which a test may stop and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            message = "redis-server is not installed: cannot start a Redis of our own"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.binary = binary
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[Any] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", self.port):
            if time.monotonic() > deadline:
                raise TimeoutError("the throwaway redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None


# --- the app and its processes ---------------------------------------------------------------------


def settings(*, url: str, broker: str, receiver: str, lease: float = 60.0, relay_interval: float = 0.5,
             stale_after: float = 600.0) -> dict[str, str]:
    """The ``CW_*`` variables :func:`make_app` reads (one set per proof, fresh queue names)."""
    queue = f"cw_proof_{uuid.uuid4().hex[:10]}"
    return {"CW_DATABASE": url, "CW_BROKER": broker, "CW_RECEIVER": receiver, "CW_QUEUE": queue,
            "CW_RELAY_QUEUE": queue + "_relay", "CW_LEASE": str(lease), "CW_RELAY_INTERVAL": str(relay_interval),
            "CW_STALE_AFTER": str(stale_after)}


def make_app(env: Mapping[str, str], *, pool: int = 10) -> tuple[Chimeway, Celery]:
    """The proof app: webhook to the receiver, dispatched through Celery."""
    celery_app = Celery("chimeway_proofs", broker=env["CW_BROKER"])
    celery_app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    dispatcher = CeleryDispatcher(
        celery_app, queue=env["CW_QUEUE"], relay_queue=env["CW_RELAY_QUEUE"],
        relay_interval=float(env["CW_RELAY_INTERVAL"]), stale_after=timedelta(seconds=float(env["CW_STALE_AFTER"])),
    )
    engine = create_engine(env["CW_DATABASE"], pool_size=pool, max_overflow=20, pool_pre_ping=True)
    app = Chimeway(engine=engine, dispatcher=dispatcher, lease_ttl=timedelta(seconds=float(env["CW_LEASE"])),
                   channels={"webhook": Webhook(url=env["CW_RECEIVER"], secret=SECRET, timeout=30.0)})
    return app, celery_app


def _environ(env: Mapping[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def start_celery_worker(env: Mapping[str, str], *, name: str, pool: str = "threads", concurrency: int = 20,
                        beat_dir: Path | None = None) -> subprocess.Popen[Any]:
    """``celery worker`` over the proof's queues, in a process group of its own (so it can be killed whole)."""
    command = [sys.executable, "-m", "celery", "-A", "celery_worker_app:celery_app", "worker",
               "-Q", f"{env['CW_QUEUE']},{env['CW_RELAY_QUEUE']}", "-P", pool, "-c", str(concurrency),
               "-n", f"{name}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-l", "WARNING"]
    if beat_dir is not None:
        command += ["-B", "-s", str(beat_dir / f"beat-{name}")]
    return Spooled(command, cwd=str(HERE), env=_environ(env), start_new_session=True)


def start_chimeway_worker(env: Mapping[str, str]) -> subprocess.Popen[Any]:
    """``chimeway worker`` on the same app: it runs the outbox relay and rescue as plugins."""
    command = [sys.executable, "-m", "chimeway.cli", "worker", "--app", "celery_worker_app:app",
               "--poll-interval", "0.2"]
    return Spooled(command, cwd=str(HERE), env=_environ(env), start_new_session=True)


def _signal(proc: subprocess.Popen[Any], signum: int) -> None:
    # The whole group when the process leads one (started with start_new_session).
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process and every child (a prefork pool's children too)."""
    _signal(proc, signal.SIGKILL)
    proc.wait(30)


def stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> str:
    """SIGTERM (then SIGKILL) the process (group); returns what it wrote to stderr."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            kill_group(proc)
    return proc.stderr_text() if isinstance(proc, Spooled) else ""
