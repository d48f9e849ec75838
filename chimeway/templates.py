"""Rendering message fields with Jinja2.

Undefined variables are errors (``StrictUndefined``). Fields whose name ends
in ``html`` are autoescaped; everything else is plain text. Templates are
compiled once per source string.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from chimeway.errors import TemplateRenderError

__all__ = ["render_fields"]

_TEXT = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
_HTML = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=False)


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> jinja2.Template:
    return (_HTML if html else _TEXT).from_string(source)


def render_fields(
    templates: Mapping[str, str],
    context: Mapping[str, Any],
    *,
    where: str,
) -> dict[str, str]:
    """Render every field template with ``context``.

    Args:
        templates: field name → Jinja2 source.
        context: the variables (params plus ``recipient``).
        where: names the notifier and channel in error messages.
    """
    out: dict[str, str] = {}
    for field, source in templates.items():
        try:
            template = _compile(source, field.endswith("html"))
            out[field] = template.render(context)
        except jinja2.UndefinedError as exc:
            raise TemplateRenderError(
                f"{where}: template field {field!r} uses a variable that is not in params: {exc.message}"
            ) from exc
        except jinja2.TemplateError as exc:
            raise TemplateRenderError(f"{where}: template field {field!r} failed: {exc}") from exc
    return out
