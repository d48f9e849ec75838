"""Every Python block in guides/*.md runs, in order, in one namespace per guide.

Blocks are found by Sybil's Markdown parser: fenced ``python`` blocks (a block
that starts with ``>>>`` is a doctest whose printed output is compared) and
``<!-- invisible-code-block: python -->`` comments, which hold the setup a
reader does not need to see (real local servers, a temporary database) and the
asserts that keep a guide's stated outcomes true. A block may ``await`` at top
level, as in an async function; each guide has one event loop for that.
"""

from __future__ import annotations

import ast
import doctest
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from guide_support import GuideContext, isolated_registries
from sybil import Example, Sybil
from sybil.evaluators.python import pad
from sybil.parsers.markdown import PythonCodeBlockParser

GUIDES_DIR = Path(__file__).resolve().parents[2] / "guides"
GUIDES = sorted(GUIDES_DIR.glob("*.md"))

# A fence whose language is a spelling of Python that the parser would not run.
_UNRUN_PYTHON = re.compile(r"^\s*```\s*(py|python3|Python|pycon|ipython)\s*$", re.MULTILINE)


class AwaitingEvaluator:
    """Sybil's Python evaluator, plus top-level ``await`` on the guide's event loop."""

    def __call__(self, example: Example) -> None:
        __tracebackhide__ = True
        source = pad(example.parsed, example.line + example.parsed.line_offset)
        code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                       dont_inherit=True)
        namespace: dict[str, Any] = example.namespace
        result = eval(code, namespace)
        if code.co_flags & inspect.CO_COROUTINE:
            namespace["guide"].loop.run_until_complete(result)
        namespace.pop("__builtins__", None)


class Parser(PythonCodeBlockParser):
    def __init__(self) -> None:
        super().__init__(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        self.codeblock_parser = self.codeblock_parser_class("python", AwaitingEvaluator())


SYBIL = Sybil(parsers=[Parser()], path=str(GUIDES_DIR), patterns=["*.md"])


def test_every_guide_is_run() -> None:
    assert {p.name for p in GUIDES} >= {"getting-started.md", "channels.md", "integrations.md"}


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_guide_code_is_clean(guide: Path) -> None:
    """What a reader copies imports no private module and no name it does not use."""
    text = guide.read_text()
    visible = [str(e.parsed) for e in SYBIL.parse(guide).examples()
               if text.startswith("```", e.region.start) and isinstance(e.parsed, str)]
    source = "\n".join(visible)
    private = re.findall(r"^\s*(?:from|import)\s+(chimeway\S*\._\w+)", source, re.MULTILINE)
    assert not private, f"{guide.name} imports private modules: {private}"
    # The blocks share one namespace, so a name imported in one block may be used in another.
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "F401",
         "--output-format", "concise", "--stdin-filename", f"{guide.stem}.py", "-"],
        input=source, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, f"{guide.name}: unused imports\n{lint.stdout}"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda path: path.name)
def test_guide_runs(guide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = guide.read_text()
    assert not _UNRUN_PYTHON.search(text), f"{guide.name}: write Python blocks as ```python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    document = SYBIL.parse(guide)
    with isolated_registries(), GuideContext(tmp_path, monkeypatch) as context:
        document.namespace.update(__name__=f"guides.{guide.stem.replace('-', '_')}", guide=context)
        for example in document.examples():
            if text.startswith("```", example.region.start):
                context.blocks.append(str(example.parsed))
            example.evaluate()
