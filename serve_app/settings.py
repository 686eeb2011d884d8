"""pydantic fields built from the settings dataclasses of ``models/``, so that HTTP and config limits
are the models' own (declared once, with :func:`models.settings.bounded`).

``@derive(AmgSettings)`` on a pydantic model adds one field per ``init`` field of the dataclass: the
same name, type, default and rule (``ge``/``gt``/``le``/``lt`` -> ``Field`` bounds, ``choices`` ->
``Literal``, ``min_length`` -> ``Field(min_length=...)``). A bad value is then rejected by pydantic with
the field's path and the rule (``amg.points_per_side: Input should be less than or equal to 128``),
before the dataclass is built; the dataclass checks the same rule again in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, TypeVar, Union

from pydantic import BaseModel, Field, create_model

from models.amg import AmgSettings
from models.settings import field_rules

_JSON_TYPES = (str, int, float, bool, type(None), dict, list)
M = TypeVar("M", bound=type[BaseModel])


def _json_type(hint: Any) -> Any:
    """The part of a dataclass field's type that a JSON value can have: ``str | Callable`` -> ``str``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        kept = [a for a in typing.get_args(hint) if a in _JSON_TYPES]
        return Union[tuple(kept)] if len(kept) > 1 else kept[0]  # noqa: UP007 (a runtime-built union)
    return hint


def pydantic_fields(
    *settings: type, optional: bool = False, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> dict[str, tuple[Any, Any]]:
    """``create_model`` field definitions of the ``init`` fields of one or more settings dataclasses.

    Args:
        settings: the dataclasses; a field in several of them must carry the same type and rule.
        optional: every field ``T | None = None`` (a request's overrides: unset takes the app's default);
            else the dataclass's own default.
        fields: only these names (None: all).
        exclude: leave these names out.

    Raises:
        ValueError: two dataclasses declare one field differently.
    """
    wanted = None if fields is None else set(fields)
    out: dict[str, tuple[Any, Any]] = {}
    seen: dict[str, tuple[Any, dict]] = {}
    for cls in settings:
        hints = typing.get_type_hints(cls)
        rules = field_rules(cls)
        for f in dataclasses.fields(cls):
            if not f.init or f.name in exclude or (wanted is not None and f.name not in wanted):
                continue
            rule = rules.get(f.name, {})
            if f.name in seen:
                if seen[f.name] != (hints[f.name], rule):
                    raise ValueError(f"{f.name} is declared differently in {[c.__name__ for c in settings]}")
                continue
            seen[f.name] = (hints[f.name], rule)
            typ = _json_type(hints[f.name])
            if "choices" in rule:
                values = tuple(c for c in rule["choices"] if c is not None)
                typ = Literal[values] if None not in rule["choices"] else Literal[values] | None
            bounds = {k: v for k, v in rule.items() if k != "choices"}
            if optional:
                typ, default = typ | None, {"default": None}
            elif f.default is not dataclasses.MISSING:
                default = {"default": f.default}
            elif f.default_factory is not dataclasses.MISSING:
                default = {"default_factory": f.default_factory}
            else:
                default = {}  # required, as in the dataclass
            out[f.name] = (typ, Field(**default, **bounds))
    return out


def derive(
    *settings: type, optional: bool = False, fields: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> Callable[[M], M]:
    """Class decorator: the pydantic model plus the fields of ``settings`` (see :func:`pydantic_fields`).

    The result is a subclass with the decorated class's name, docstring, config, fields and methods.
    """

    def wrap(cls: M) -> M:
        defs = pydantic_fields(*settings, optional=optional, fields=fields, exclude=exclude)
        names = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
        return create_model(cls.__name__, __base__=cls, **names, **defs)

    return wrap


def amg_settings(defaults: dict, overrides: dict | None) -> AmgSettings:
    """App defaults overlaid with a request's set fields (None: unset).

    Raises:
        ValueError: an invalid combination (``AmgSettings`` validation).
    """
    return AmgSettings(**{**defaults, **{k: v for k, v in (overrides or {}).items() if v is not None}})


def fade_settings(strategy: str, params: dict, request_strategy: str | None, request_params: dict | None) -> dict:
    """A request's fade settings over the app's: none given keeps the app's strategy and parameters; the
    app's strategy tunes its parameters; another strategy takes only the request's.

    Returns:
        ``{"strategy", "params"}``, not yet validated (``models.fade_strategies.make_fade_strategy``).
    """
    if request_strategy is None:
        return {"strategy": strategy, "params": dict(params)}
    if request_strategy == strategy:
        return {"strategy": strategy, "params": {**params, **(request_params or {})}}
    return {"strategy": request_strategy, "params": dict(request_params or {})}
