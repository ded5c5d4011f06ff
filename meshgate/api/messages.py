"""Validation problems in words a YAML author can act on.

pydantic's messages name Python things ("Extra inputs are not permitted") and echo inputs whole.
These functions turn them into one short message for a `FILE:LINE: field.path: problem` line:
long values are clipped, an unknown field suggests the nearest valid name, and a value or kind
that exists under another apiVersion says which one.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

__all__ = ["CLIP_AT", "clip", "describe_validation_error", "describe_unknown_kind"]

# Longer inputs are cut in messages: a 5,000-character value must not flood a terminal or a log.
CLIP_AT = 80

# Friendlier words for the patterns models.py and policies.py use (keyed by the pattern itself).
_PATTERN_WORDS = {
    r"^([0-9]{1,5}(h|m|s|ms)){1,4}$": "is not a duration (use h, m, s or ms, like 10s, 500ms or 1m30s)",
    r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$":
        "is not a valid name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$":
        "is not a valid hostname (a lowercase DNS name like api.example.com, or *.example.com)",
    r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$":
        "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)",
    # security_policy.ParamName
    r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,256}$": "is not a valid cookie or parameter name (letters, digits and "
        "!#$%&'*+-.^_`|~ only)",
    # models.CORS_ORIGIN_RE
    r"^(\*|https?://(\*|(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)(:[0-9]{1,5})?)$":
        "is not an origin (scheme://host[:port] with scheme http or https, like https://app.example or "
        "https://*.example.com; or * alone)",
}

# What a value that only another apiVersion accepts is called in the hint.
_FEATURE_WORDS = {"Template": "path templates"}
_KIND_WORDS = {("meshgate.io/v1alpha1", "HTTPRoute"): "meshgate's HTTPRoute"}


def clip(value: Any, limit: int = CLIP_AT) -> str:
    """`value` as a message shows it: quoted if a string, cut after `limit` characters with
    the full length ("'12345…' (5000 characters)")."""
    text = value if isinstance(value, str) else str(value)
    shown = repr(text) if isinstance(value, str) else text
    if len(text) <= limit:
        return shown
    head = repr(text[:limit]) if isinstance(value, str) else text[:limit]
    return f"{head}… ({len(text)} characters)"


def describe_validation_error(error: Mapping[str, Any], model: type[BaseModel] | None = None, data: Any = None) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) as a message.

    `model` is the model that was validated and `data` its input; with them, an unknown field
    suggests the nearest valid name at that place (`unknown field; did you mean backendRefs?`)
    and a value that another apiVersion of the same kind accepts says so.
    """
    kind, msg, loc = error["type"], error["msg"], tuple(error.get("loc", ()))
    value = error.get("input")
    if kind == "extra_forbidden":
        return "unknown field" + _unknown_field_hint(loc, model, data)
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern", "")
        words = _PATTERN_WORDS.get(pattern, f"has the wrong format (expected pattern {pattern})")
        return f"{clip(value)} {words}"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    else:
        msg = msg[0].lower() + msg[1:]
    if kind == "literal_error":
        msg += _other_api_version_hint(loc, model, value)
    # pydantic echoes some inputs in its messages: never whole when long.
    if isinstance(value, str) and len(value) > CLIP_AT and value in msg:
        msg = msg.replace(repr(value), clip(value)).replace(value, clip(value))
    return msg


def describe_unknown_kind(api_version: str, kind: str, kinds: Iterable[tuple[str, str]]) -> str:
    """Why no model matches this apiVersion and kind, pointing at the likely intended one."""
    kinds = sorted(set(kinds))
    head = f"unknown kind {clip(kind)} for apiVersion {clip(api_version)}"
    versions = [v for v, k in kinds if k == kind]
    if versions:
        return f"{head}; did you mean apiVersion {' or '.join(versions)}?"
    in_version = [k for v, k in kinds if v == api_version]
    guess = _nearest(kind, in_version) or _nearest(kind, [k for _, k in kinds])
    if guess:
        versions = [v for v, k in kinds if k == guess]
        if api_version in versions:
            return f"{head}; did you mean kind {guess}?"
        return f"{head}; did you mean kind {guess} (apiVersion {' or '.join(versions)})?"
    known = ", ".join(f"{v} {k}" for v, k in kinds)
    return f"{head} (known: {known})"


# -- helpers --------------------------------------------------------------------------------


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    choices = list(dict.fromkeys(choices))
    by_lower = {c.lower(): c for c in choices}
    for candidate in (word.lower(), to_camel(word).lower()):  # HttpRoute, backend_refs
        if candidate in by_lower:
            return by_lower[candidate]
    found = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[found[0]] if found else None


def _unknown_field_hint(loc: tuple, model: type[BaseModel] | None, data: Any) -> str:
    if model is None or not loc or not isinstance(loc[-1], str):
        return ""
    name, parent = loc[-1], loc[:-1]
    fields: dict[str, Any] = {}
    for m in _models_at(model, parent):
        fields.update(_fields_by_alias(m))
    present = _value_at(data, parent)
    taken = set(present) if isinstance(present, Mapping) else set()
    guess = _nearest(name, [alias for alias in fields if alias not in taken])
    if guess:
        return f"; did you mean {guess}?"
    for version, other in _same_kind_other_versions(model):
        if any(name in _fields_by_alias(m) for m in _models_at(other, parent)):
            return f"; {name} needs apiVersion {version}"
    return ""


def _other_api_version_hint(loc: tuple, model: type[BaseModel] | None, value: Any) -> str:
    if model is None or not loc or not isinstance(value, (str, int)):
        return ""
    for version, other in _same_kind_other_versions(model):
        for m in _models_at(other, loc[:-1]):
            field = _fields_by_alias(m).get(loc[-1]) if isinstance(loc[-1], str) else None
            if field is not None and value in _literal_values(field.annotation):
                where = f"apiVersion {version}"
                if (version, _kind_of(other)) in _KIND_WORDS:
                    where += f" ({_KIND_WORDS[version, _kind_of(other)]})"
                if value in _FEATURE_WORDS:
                    return f"; {_FEATURE_WORDS[value]} need {where}"
                return f"; {clip(value)} needs {where}"
    return ""


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    values = _literal_values(field.annotation) if field else ()
    return values[0] if values else None


def _api_versions_of(model: type[BaseModel]) -> tuple:
    field = model.model_fields.get("api_version")
    return _literal_values(field.annotation) if field else ()


def _same_kind_other_versions(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """(apiVersion, model) of every other model for the same kind (HTTPRoute: Gateway API's and meshgate's)."""
    from meshgate.api.models import KINDS
    from meshgate.api.policies import POLICY_KINDS

    kind, own = _kind_of(model), _api_versions_of(model)
    return [(v, m) for (v, k), m in {**KINDS, **POLICY_KINDS}.items() if k == kind and m is not model and v not in own]


def _fields_by_alias(model: type[BaseModel]) -> dict[str, Any]:
    return {(f.alias or name): f for name, f in model.model_fields.items()}


def _literal_values(annotation: Any) -> tuple:
    out: list = []
    for t in _flatten(annotation):
        if typing.get_origin(t) is Literal:
            out.extend(typing.get_args(t))
    return tuple(out)


def _flatten(annotation: Any) -> list[Any]:
    """The alternatives of an annotation: Annotated and Optional/Union unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _models_at(model: type[BaseModel], loc: tuple) -> list[type[BaseModel]]:
    """The models that describe the mapping at `loc` (a pydantic error location, by alias)."""
    current: list[Any] = [model]
    for part in loc:
        following: list[Any] = []
        for t in (x for c in current for x in _flatten(c)):
            if isinstance(t, type) and issubclass(t, BaseModel):
                field = _fields_by_alias(t).get(part) if isinstance(part, str) else None
                if field is not None:
                    following.append(field.annotation)
                continue
            origin, args = typing.get_origin(t), typing.get_args(t)
            if isinstance(part, int) and origin in (list, tuple, set, frozenset) and args:
                following.append(args[0])
            elif isinstance(part, str) and origin is dict and len(args) == 2:
                following.append(args[1])
        current = following
    return [t for c in current for t in _flatten(c) if isinstance(t, type) and issubclass(t, BaseModel)]


def _value_at(data: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data
