"""pydantic's validation errors as the one-line ConfigError a user reads: the dotted key, what was
given and what is allowed, and for an unknown key the closest known one."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from lookalike.errors import ConfigError

RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def config_error(exc: ValidationError, root: type[BaseModel]) -> ConfigError:
    """The first problem of ``exc`` (raised validating ``root``) as a ConfigError."""
    errors = exc.errors()
    # A misspelt key is the likelier cause of whatever else failed, so it is reported first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    return ConfigError(_message(error, root))


def section_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of a field that is a section of settings; None for a plain value."""
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _walk(
    root: type[BaseModel], loc: tuple[Any, ...]
) -> tuple[type[BaseModel], list[str], FieldInfo | None, tuple[Any, ...]]:
    """Follow an error's ``loc`` through the models: (the innermost model, the field names on the
    way, the info of the last field if it holds a value, what is left of loc below that)."""
    model: type[BaseModel] = root
    names: list[str] = []
    for depth, part in enumerate(loc):
        info = model.model_fields.get(str(part))
        if info is None:
            return model, names, None, loc[depth:]
        names.append(str(part))
        inner = section_model(info)
        if inner is None:
            return model, names, info, loc[depth + 1 :]
        model = inner
    return model, names, None, ()


def _message(error: ErrorDetails, root: type[BaseModel]) -> str:
    prefix = str(getattr(root, "prefix", ""))
    model, names, info, rest = _walk(root, tuple(error["loc"]))
    kind, value = error["type"], error.get("input")
    at = prefix + "".join(f"{name}." for name in names)
    path = at.rstrip(".")
    if kind == "extra_forbidden" and rest:
        allowed = list(model.model_fields)
        close = difflib.get_close_matches(str(rest[0]), allowed, n=1)
        hint = f" Did you mean '{at}{close[0]}'?" if close else ""
        # The value is not echoed: a misplaced credential must not end up in a log.
        return (
            f"unknown config key '{at}{rest[0]}'.{hint} Allowed keys in '{path or 'top level'}': {', '.join(allowed)}"
        )
    if kind == "value_error" and info is None and not rest:
        # A section's own check across its keys: the message names the keys.
        return f"config: {error.get('ctx', {}).get('error', error['msg'])}"
    if info is None:
        # A section as a whole: something other than a mapping where one belongs.
        return f"config section '{path or 'top level'}' must be a mapping, got {value!r}"
    if rest and rest[-1] == "[key]":
        return f"config key '{path}': its key {rest[0]!r} is not a string; quote it in the YAML file"
    if rest:
        return f"config key '{path}': {error['msg']} at {'.'.join(map(str, rest))} (got {value!r})"
    if kind == "literal_error":
        return f"config key '{path}': {value!r} is not one of {', '.join(map(str, choices(info)))}"
    if kind in RANGE_ERRORS:
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        use = extra.get("allowed") or error["msg"].lower().replace("input should be ", "a number ")
        return f"config key '{path}': {value!r} is not allowed; use {use}"
    if kind == "value_error":
        return f"config key '{path}': {error.get('ctx', {}).get('error', error['msg'])}"
    return (
        f"config key '{path}': expected {type_name(info.annotation)}, got {value!r} "
        f"({type(value).__name__}). Fix it in the YAML file or with --set {path}=..."
    )


def choices(info: FieldInfo) -> tuple[Any, ...]:
    """The values a Literal field (optional or not) takes; () for other fields."""
    out: tuple[Any, ...] = ()
    for arg in (info.annotation, *typing.get_args(info.annotation)):
        if typing.get_origin(arg) is Literal:
            out += typing.get_args(arg)
    return out


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        shown = " or ".join(type_name(a) for a in args)
        return f"{shown} or null" if len(args) < len(typing.get_args(tp)) else shown
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true/false",
        dict: "a mapping",
        list: "a list",
    }
    return names.get(origin or tp, getattr(tp, "__name__", str(tp)))
