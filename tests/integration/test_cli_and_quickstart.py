"""The README's quickstart and the `chimeway` command, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from chimeway.db import create_engine
from chimeway.models import deliveries_table

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "chimeway.cli"]


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_quickstart_runs_on_the_default_sqlite_file(tmp_path: Path) -> None:
    # As the README has it: a .venv in the current folder, not activated (not on PATH).
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent, target_is_directory=True)
    python = f".venv/bin/{Path(sys.executable).name}"
    path = {"PATH": "/usr/bin:/bin"}
    first = _run([python, str(ROOT / "examples" / "quickstart.py")], tmp_path, **path)
    assert first.returncode == 0, first.stderr
    assert "rolled back: webhook requests received = 0" in first.stdout
    assert "same key again → duplicate=True" in first.stdout
    assert "webhook receiver got 1 signed request(s)" in first.stdout
    assert "Order 1 shipped — Track it at https://example.test/t/1  [unread]" in first.stdout
    assert first.stdout.count("status   succeeded") == 2
    assert (tmp_path / "chimeway.db").exists()

    # The command it prints works in that shell as printed.
    last = first.stdout.strip().splitlines()[-1]
    prefix = "(the same from a shell: .venv/bin/chimeway explain "
    assert last.startswith(prefix) and last.endswith(")"), last
    delivery_id = last[len(prefix):-1]
    explained = _run(["bash", "-c", last[len("(the same from a shell: "):-1]], tmp_path, **path)
    assert explained.returncode == 0, explained.stderr
    assert f"delivery {delivery_id}" in explained.stdout
    assert "via webhook" in explained.stdout and "status   succeeded" in explained.stdout

    # Running it again on the same file is a new order, not a failure.
    second = _run([sys.executable, str(ROOT / "examples" / "quickstart.py")], tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Order 2 shipped" in second.stdout

    engine = create_engine(f"sqlite:///{tmp_path / 'chimeway.db'}")
    with engine.connect() as conn:
        delivery_id = conn.execute(
            sa.select(deliveries_table.c.id).where(deliveries_table.c.channel == "webhook").limit(1)
        ).scalar_one()
    engine.dispose()
    as_json = _run([*CLI, "explain", str(delivery_id), "--json"], tmp_path)
    assert '"status": "succeeded"' in as_json.stdout


def test_cli_migrate_and_helpful_errors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    migrated = _run([*CLI, "migrate", "--database-url", url], tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert "empty → 0001" in migrated.stdout or "→" in migrated.stdout
    engine = create_engine(url)
    assert "chimeway_deliveries" in sa.inspect(engine).get_table_names()
    engine.dispose()
    missing = _run([*CLI, "explain", "01a2019b-0000-7000-8000-000000000000", "--database-url", url], tmp_path)
    assert missing.returncode == 2
    assert "no delivery with id" in missing.stderr
    bad_id = _run([*CLI, "explain", "nope", "--database-url", url], tmp_path)
    assert bad_id.returncode == 2 and "is not a valid id" in bad_id.stderr
    bad_app = _run([*CLI, "worker", "--app", "no_such_module:app"], tmp_path)
    assert bad_app.returncode == 2 and "cannot import 'no_such_module'" in bad_app.stderr
    jobs = _run([*CLI, "jobs", "--database-url", url], tmp_path)
    assert jobs.returncode == 0, jobs.stderr
    assert "chimeway_delivery" in jobs.stdout
    helped = _run([*CLI, "--help"], tmp_path)
    assert helped.returncode == 0 and "migrate" in helped.stdout and "worker" in helped.stdout
