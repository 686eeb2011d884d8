"""Bounded fields of the settings dataclasses in ``models/``: the one place their limits are declared.

A settings class is a frozen dataclass whose numeric and enumerated fields are declared with
:func:`bounded`, which stores the rule in the field's ``metadata`` (keys ``ge``, ``gt``, ``le``, ``lt``,
``choices``, ``min_length``); its ``__post_init__`` calls :func:`check_bounds`, which enforces those
rules, and adds any rule across fields by hand. ``serve_app`` builds its pydantic request and config
models from the same metadata (``serve_app/settings.py``), so the HTTP and config limits are these.

Pure Python.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import typing
from collections.abc import Sequence
from typing import Any

#: The metadata keys :func:`bounded` writes (pydantic ``Field`` arguments of the same names).
BOUND_KEYS = ("ge", "gt", "le", "lt", "choices", "min_length")


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    min_length: int | None = None,
) -> Any:
    """A dataclass field with a default and its rule, e.g. ``points_per_side: int = bounded(32, ge=1, le=128)``.

    Args:
        default: the default value.
        ge, gt, le, lt: bounds of a number (finite numbers only; ``bool`` is not a number here).
        choices: the allowed values (None may be one of them).
        min_length: least length of a string value (other values, e.g. a callable, are not checked).
    """
    rules = {
        "ge": ge,
        "gt": gt,
        "le": le,
        "lt": lt,
        "choices": None if choices is None else tuple(choices),
        "min_length": min_length,
    }
    return dataclasses.field(default=default, metadata={k: v for k, v in rules.items() if v is not None})


@functools.cache
def field_rules(cls: type) -> dict[str, dict[str, Any]]:
    """``{field name: {rule: value}}`` of the bounded fields of a settings dataclass (others left out).

    Cached per class: do not modify the result.
    """
    return {
        f.name: {k: f.metadata[k] for k in BOUND_KEYS if k in f.metadata}
        for f in dataclasses.fields(cls)
        if any(k in f.metadata for k in BOUND_KEYS)
    }


@functools.cache
def _integer_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(name for name, hint in hints.items() if hint is int)


def describe(rules: dict[str, Any], integer: bool = False) -> str:
    """A rule in words, as the error messages say it: ``in 1..128``, ``in [0, 1]``, ``> 0``, ``>= 16``."""
    if "choices" in rules:
        return f"one of {rules['choices']}"
    if "min_length" in rules:
        return f"at least {rules['min_length']} character(s) long"
    lo = ("ge", rules["ge"]) if "ge" in rules else ("gt", rules["gt"]) if "gt" in rules else None
    hi = ("le", rules["le"]) if "le" in rules else ("lt", rules["lt"]) if "lt" in rules else None
    if lo and hi:
        if integer and lo[0] == "ge" and hi[0] == "le":
            return f"in {lo[1]}..{hi[1]}"
        return f"in {'[' if lo[0] == 'ge' else '('}{lo[1]}, {hi[1]}{']' if hi[0] == 'le' else ')'}"
    if lo:
        return f"{'>=' if lo[0] == 'ge' else '>'} {lo[1]}"
    if hi:
        return f"{'<=' if hi[0] == 'le' else '<'} {hi[1]}"
    return "valid"


def _obeys(value: Any, rules: dict[str, Any], integer: bool) -> bool:
    if "choices" in rules:
        return any(value == c and type(value) is type(c) for c in rules["choices"])  # True is not 1
    if "min_length" in rules:
        return not isinstance(value, str) or len(value) >= rules["min_length"]
    number = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
        return False
    return (
        ("ge" not in rules or value >= rules["ge"])
        and ("gt" not in rules or value > rules["gt"])
        and ("le" not in rules or value <= rules["le"])
        and ("lt" not in rules or value < rules["lt"])
    )


def check_bounds(settings: Any) -> None:
    """Enforce the :func:`bounded` rules of a settings dataclass instance (call it in ``__post_init__``).

    A field declared ``int`` must hold an integer (``numpy`` integers count); a bounded ``float`` field
    any finite real number; ``bool`` is neither.

    Raises:
        ValueError: the first field that breaks its rule, e.g. ``"points_per_side must be an integer in 1..128;
            got 0"`` or ``"output_size must be an integer in 16..1024; got 224.0"``.
    """
    for name in field_rules(type(settings)):
        check_field(type(settings), name, getattr(settings, name))


def check_field(cls: type, name: str, value: Any) -> None:
    """Enforce the :func:`bounded` rule of one field of a settings dataclass on a lone value.

    Raises:
        ValueError: as :func:`check_bounds`.
    """
    rules = field_rules(cls).get(name)
    if rules is None:
        return
    integer = name in _integer_fields(cls)
    if not _obeys(value, rules, integer):
        kind = "an integer " if integer and "choices" not in rules else ""
        raise ValueError(f"{name} must be {kind}{describe(rules, integer)}; got {value!r}")
