"""The import layering ARCHITECTURE.md describes holds (contracts in .importlinter)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_every_import_layer_contract_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    code = lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "0 broken" in out and "2 kept" in out


def test_the_architecture_page_lists_the_same_layers() -> None:
    config = (ROOT / ".importlinter").read_text()
    block = config.split("layers =", 1)[1].split("\n\n", 1)[0]
    layers = [line.strip().replace("chimeway.", "") for line in block.strip().splitlines()]
    page = (ROOT / "ARCHITECTURE.md").read_text()
    drawn = re.search(r"## Layers.*?```\n(.*?)```", page, re.S)
    assert drawn is not None
    assert [line.strip() for line in drawn.group(1).strip().splitlines()] == layers
