"""The `chimeway` command as an operator uses it: real processes, real databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

CLI = [sys.executable, "-m", "chimeway.cli"]

APP = textwrap.dedent('''
    import os
    from chimeway import Chimeway, Notifier, Recipient, Snooze
    from chimeway.channels import Webhook

    app = Chimeway(os.environ["NOTIFY_DB"], dispatcher="queue",
                   channels={"webhook": Webhook(url="http://127.0.0.1:9/refused", secret="s")})

    class Ping(Notifier):
        key = "ping"
        channels = ["webhook"]
        templates = {"webhook": {"body": "ping {{ n }}"}}

        def recipients(self, params):
            return [Recipient(id="user:1")]

    @app.job(queue="mailers", max_attempts=1)
    def doomed(n: int, password: str = "") -> None:
        raise RuntimeError(f"mail server said no to {n}")

    @app.job(queue="mailers")
    def sleepy() -> None:
        raise Snooze(600)

    @app.job(queue="reports")
    def report() -> None:
        pass
''')


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chimeway: error: ")
    return lines[0]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "notify.py").write_text(APP)
    monkeypatch.setenv("NOTIFY_DB", f"sqlite:///{tmp_path / 'notify.db'}")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _load(project: Path) -> object:
    import importlib

    sys.modules.pop("notify", None)
    return importlib.import_module("notify")


def test_jobs_list_show_explain_and_trace(project: Path) -> None:
    notify = _load(project)
    app = notify.app  # type: ignore[attr-defined]
    app.migrate()
    with Session(app.engine) as session, session.begin():
        result = app.trigger(session, notify.Ping, {"n": 1}, idempotency_key="k1")  # type: ignore[attr-defined]
        notify.doomed.enqueue(session, n=7, password="hunter2")  # type: ignore[attr-defined]
        notify.report.enqueue(session)  # type: ignore[attr-defined]
    app.work()
    app.close()
    delivery_id = result.delivery_ids[0]
    db = ["--app", "notify:app"]

    counts = _run([*CLI, "jobs", *db], project)
    assert counts.returncode == 0, counts.stderr
    assert any(line.split()[:1] == ["mailers"] and line.split()[6] == "1" for line in counts.stdout.splitlines())

    listed = _run([*CLI, "jobs", "list", "--state", "discarded", "--json", *db], project)
    jobs = json.loads(listed.stdout)
    assert [(j["worker"], j["attempt"], j["max_attempts"]) for j in jobs] == [("notify.doomed", 1, 1)]
    assert jobs[0]["last_error"] == "RuntimeError: mail server said no to 7"
    assert jobs[0]["args"] == {"n": 7, "password": "[redacted]"}
    doomed_id = jobs[0]["id"]

    table = _run([*CLI, "jobs", "list", "--queue", "chimeway_delivery", *db], project)
    assert "chimeway.deliver" in table.stdout and "retryable" in table.stdout
    assert "ConnectError" in table.stdout and "notify.doomed" not in table.stdout

    shown = _run([*CLI, "jobs", "show", str(doomed_id), *db], project)
    assert shown.returncode == 0, shown.stderr
    assert f"job {doomed_id}  [discarded]  notify.doomed on queue mailers" in shown.stdout
    assert 'raise RuntimeError(f"mail server said no to {n}")' in shown.stdout  # the traceback
    assert "hunter2" not in shown.stdout

    explained = _run([*CLI, "explain", str(delivery_id), *db], project)
    assert "status   failed" in explained.stdout
    assert "[retryable] attempt 1/5 on chimeway_delivery" in explained.stdout
    as_json = json.loads(_run([*CLI, "explain", str(delivery_id), "--json", *db], project).stdout)
    assert as_json["jobs"][0]["state"] == "retryable"

    traced = json.loads(_run([*CLI, "trace", str(result.event_id), "--json", *db], project).stdout)
    assert traced["idempotency_key"] == "k1"
    assert [d["delivery_id"] for d in traced["deliveries"]] == [str(delivery_id)]
    assert traced["deliveries"][0]["jobs"][0]["queue"] == "chimeway_delivery"

    retried = _run([*CLI, "jobs", "retry", str(doomed_id), *db], project)
    assert retried.returncode == 0 and "re-armed 1 job(s)" in retried.stdout
    cancelled = _run([*CLI, "jobs", "cancel", str(doomed_id), *db], project)
    assert cancelled.returncode == 0 and "cancelled 1 job(s)" in cancelled.stdout
    deleted = _run([*CLI, "jobs", "delete", str(doomed_id), *db], project)
    assert deleted.returncode == 0 and "deleted 1 job(s)" in deleted.stdout
    gone = _run([*CLI, "jobs", "show", str(doomed_id), *db], project)
    assert f"no job with id {doomed_id}" in _one_line_error(gone)


def test_every_database_mistake_is_one_line_naming_the_url_and_the_fix(tmp_path: Path) -> None:
    env = {"CHIMEWAY_DATABASE_URL": ""}
    empty = _one_line_error(_run([*CLI, "jobs"], tmp_path, **env))
    assert "sqlite:///chimeway.db" in empty and "no such file" in empty and "chimeway migrate" in empty
    assert not (tmp_path / "chimeway.db").exists()  # a read-only command created nothing
    for read_only in (["jobs", "list"], ["explain", "01a2019b-0000-7000-8000-000000000000"]):
        assert "no such file" in _one_line_error(_run([*CLI, *read_only], tmp_path, **env))
    assert not (tmp_path / "chimeway.db").exists()

    typo = _one_line_error(_run([*CLI, "migrate", "--database-url",
                                 "postgresq://admin:PASSWORD@db.example:5432/app"], tmp_path))
    assert "PASSWORD" not in typo and "postgresq://admin:***@db.example:5432/app" in typo
    assert "unknown database kind 'postgresq'" in typo

    refused = _one_line_error(_run([*CLI, "jobs", "--database-url",
                                    "postgresql://admin:PASSWORD@127.0.0.1:1/app"], tmp_path))
    assert "PASSWORD" not in refused and "admin:***@127.0.0.1:1/app" in refused
    assert "nothing accepts connections at 127.0.0.1:1" in refused

    folder = _one_line_error(_run([*CLI, "migrate", "--database-url", "sqlite:///no/such/dir/x.db"], tmp_path))
    assert f"the folder {tmp_path / 'no/such/dir'} does not exist" in folder

    sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}").connect().close()
    unmigrated = _one_line_error(_run([*CLI, "jobs", "list", "--database-url", "sqlite:///other.db"], tmp_path))
    assert "has no Chimeway tables" in unmigrated and "chimeway migrate --database-url sqlite:///other.db" in unmigrated


@pytest.mark.postgres
def test_postgres_mistakes_name_the_database_and_the_fix(pg_server: str, tmp_path: Path) -> None:
    # Trust authentication ignores the password; it must still never be printed.
    user, _, host = pg_server.removeprefix("postgresql://").rpartition("@")
    url = f"postgresql://{user or 'postgres'}:PASSWORD@{host}/chimeway_no_such_db"
    line = _one_line_error(_run([*CLI, "jobs", "--database-url", url], tmp_path))
    assert "the database 'chimeway_no_such_db' does not exist" in line and "createdb" in line
    assert "PASSWORD" not in line
    unmigrated = _one_line_error(_run([*CLI, "explain", "01a2019b-0000-7000-8000-000000000000",
                                       "--database-url", f"{pg_server}/postgres"], tmp_path))
    assert "has no Chimeway tables" in unmigrated and "chimeway migrate" in unmigrated


def test_worker_refuses_bad_app_and_queue_before_starting(project: Path) -> None:
    nope = _one_line_error(_run([*CLI, "worker", "--app", "notify:nope"], project))
    assert "module 'notify' has no attribute 'nope'" in nope
    queue = _run([*CLI, "worker", "--app", "notify:app", "--queue", "nosuchqueue=3"], project)
    assert "the app declares no queue 'nosuchqueue'" in _one_line_error(queue)
    assert "worker.started" not in queue.stderr and queue.stdout == ""


def _wait_for(proc: subprocess.Popen[str], events: set[str], seen: list[dict[str, object]]) -> None:
    deadline = time.monotonic() + 60
    assert proc.stderr is not None
    while not events <= {str(e["event"]) for e in seen}:
        assert time.monotonic() < deadline, seen
        line = proc.stderr.readline()
        assert line, f"worker exited early: {seen}"
        if line.startswith("{"):
            seen.append(json.loads(line))


def test_worker_runs_every_queue_and_logs_retries_discards_snoozes_and_rescues(project: Path) -> None:
    notify = _load(project)
    app = notify.app  # type: ignore[attr-defined]
    app.migrate()
    with Session(app.engine) as session, session.begin():
        app.trigger(session, notify.Ping, {"n": 1}, idempotency_key="k1")  # type: ignore[attr-defined]
        notify.doomed.enqueue(session, n=7)  # type: ignore[attr-defined]
        notify.sleepy.enqueue(session)  # type: ignore[attr-defined]
        orphan = notify.report.enqueue(session)  # type: ignore[attr-defined]
    with app.engine.begin() as conn:  # a job left executing by a worker that died
        conn.execute(sa.text("UPDATE chimeway_jobs SET state='executing', attempt=1, "
                             "attempted_by='gone:1:worker:dead' WHERE id=:id"), {"id": orphan})
    app.close()

    proc = subprocess.Popen([*CLI, "worker", "--app", "notify:app", "--queue", "chimeway_delivery=2",
                             "--log-format", "json", "--poll-interval", "0.2"],
                            cwd=project, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    seen: list[dict[str, object]] = []
    try:
        _wait_for(proc, {"worker.started", "job.retry", "job.discard", "job.snooze", "job.rescue"}, seen)
        alive = _run([*CLI, "health", "--app", "notify:app"], project)
        assert alive.returncode == 0 and alive.stdout.startswith("ok: 1 worker(s) on "), alive
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    dead = _run([*CLI, "health", "--app", "notify:app"], project)
    assert dead.returncode == 1 and dead.stdout.startswith("unhealthy: no worker on "), dead
    seen += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    by_event = {str(e["event"]): e for e in seen}
    started = by_event["worker.started"]
    assert started["queues"] == {"chimeway_delivery": 2, "chimeway_signals": 10,
                                 "chimeway_workflows": 10, "default": 10, "mailers": 10, "reports": 10}
    assert by_event["job.retry"]["worker"] == "chimeway.deliver" and by_event["job.retry"]["attempt"] == 1
    assert "Connection refused" in str(by_event["job.retry"]["error"])
    assert by_event["job.discard"]["error"] == "RuntimeError: mail server said no to 7"
    assert by_event["job.snooze"]["worker"] == "notify.sleepy"
    assert by_event["job.rescue"]["job_id"] == orphan and by_event["job.rescue"]["dead_worker"] == "gone:1:worker:dead"
    assert "worker.stopped" in by_event and proc.returncode == 0
    assert all(e["level"] in ("info", "warning", "error") for e in seen)


def test_worker_warns_about_queues_with_work_it_will_not_run(project: Path) -> None:
    notify = _load(project)
    app = notify.app  # type: ignore[attr-defined]
    app.migrate()
    with Session(app.engine) as session, session.begin():
        notify.report.enqueue(session)  # type: ignore[attr-defined]
    app.close()
    proc = subprocess.Popen([*CLI, "worker", "--app", "notify:app", "--queue", "chimeway_delivery=2", "--only",
                             "--log-level", "info"],
                            cwd=project, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = [proc.stderr.readline(), proc.stderr.readline()]
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert "WARNING worker.unserved_queue: queue 'reports' has 1 job(s) waiting" in lines[0]
    assert "add --queue reports=N" in lines[0]
    assert "worker.started: chimeway worker on sqlite:///" in lines[1] and "chimeway_delivery=2" in lines[1]
    assert "chimeway_workflows" not in lines[1]
