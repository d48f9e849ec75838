"""The public surface: __all__ complete and sorted, names from the design importable."""

from __future__ import annotations

import inspect

import chimeway
import chimeway.channels
import chimeway.errors


def _public_defined(module: object) -> set[str]:
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if inspect.isclass(value) or inspect.isfunction(value):
            names.add(name)
    return names


def test_all_has_no_duplicates_and_resolves() -> None:
    # Sorting is enforced by ruff (RUF022), in isort style.
    for module in (chimeway, chimeway.channels, chimeway.errors):
        assert len(set(module.__all__)) == len(module.__all__), module.__name__
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_every_public_class_of_the_package_root_is_exported() -> None:
    assert _public_defined(chimeway) <= set(chimeway.__all__)
    assert _public_defined(chimeway.channels) <= set(chimeway.channels.__all__)


def test_every_error_is_exported() -> None:
    errors = {n for n, v in vars(chimeway.errors).items() if inspect.isclass(v) and issubclass(v, Exception)}
    assert errors <= set(chimeway.errors.__all__)
