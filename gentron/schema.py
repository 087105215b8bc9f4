"""The one validator for every config a user writes: dataclasses are the schema.

    parse(CellConfig, {"train": {"lr": 1e-3}})       # a cell config
    parse(SlurmProfile, yaml.safe_load(...), "slurm/profiles/a100.yaml")

`parse(cls, values, where)` builds `cls` from a mapping: missing keys take the dataclass defaults, an
unknown key names its closest match ("did you mean ..."), a wrong type or a value outside a `Literal`
names the key, the value and what is allowed, all in one line (`ConfigError`). Supported field types:
dataclasses (nested sections), `Optional[...]`, `Literal[...]`, `list[...]`, `dict[str, ...]`, `int`,
`float` (an int is accepted), `str`, `bool`, and unions of dataclasses told apart by their `kind` field
(`TaggedUnion`, e.g. the text-encoder specs). A field made with `required()` must be given; a field's
`metadata={"help": ...}` is added to any error about it.

Checks that span several fields stay with the type that owns them (a `check(where)` method, called
after the fields are built).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal

from gentron.errors import ConfigError



def required(example: str | None = None) -> Any:
    """A field the user must give (`path: str = required("google/flan-t5-xxl")`)."""
    return dataclasses.field(default=None, metadata={"required": True, "example": example})


class TaggedUnion:
    """Marks `Union[A, B, ...]` of dataclasses that each have `kind: Literal["a"]`: a mapping's `kind`
    picks the class. Use as `Annotated[Union[A, B], TaggedUnion]`."""


def parse(cls, values: Any, where: str = "", source: str | None = None):
    """An instance of the dataclass `cls` from `values` (a mapping, or already an instance). `where`
    prefixes the keys named in errors (`model` -> `model.depth`); `source` (e.g. a file) prefixes the
    whole message."""
    if source is None:
        return _parse(cls, values, where)
    try:
        return _parse(cls, values, where)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse(cls, values: Any, where: str):
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__} {values!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{join(where, close[0])}'?" if close else f"; known keys: {', '.join(fields)}"
            if close and len(fields) <= 8:
                hint += f" (allowed: {', '.join(fields)})"
            raise ConfigError(f"unknown config key '{join(where, key)}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            try:
                kwargs[name] = check(hints[name], values[name], join(where, name))
            except ConfigError as e:
                if "help" not in f.metadata:
                    raise
                raise ConfigError(f"{e}; give {f.metadata['help']}") from None
        elif f.metadata.get("required"):
            raise ConfigError(f"{join(where, name)} is required{_example(f)}")
    instance = cls(**kwargs)
    if hasattr(instance, "check"):
        instance.check(where)
    return instance


def check(hint, value, key: str):
    """`value` converted to `hint`, or a ConfigError naming key, value and what is allowed."""
    if typing.get_origin(hint) is typing.Annotated:
        inner, *marks = typing.get_args(hint)
        if TaggedUnion in marks:
            return _tagged(typing.get_args(inner), value, key)
        hint = inner
    if dataclasses.is_dataclass(hint):
        return _parse(hint, value, key)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if value is None:
            raise ConfigError(f"{key}=None is not allowed; give a {_name(inner[0])}")
        return check(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint_text = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}={value!r} is not allowed{hint_text}; choose one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [check(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping")
        return {k: check(args[1], v, f"{key}.{k}") for k, v in value.items()} if args else dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key}={value!r} must be of type {_name(hint)}, got {type(value).__name__}")


def _tagged(classes: tuple, value, key: str):
    by_kind = {typing.get_args(typing.get_type_hints(c)["kind"])[0]: c for c in classes}
    for c in classes:
        if isinstance(value, c):
            return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key}={value!r} must be a mapping with a 'kind' (one of {list(by_kind)})")
    kind = value.get("kind")
    if kind not in by_kind:
        close = difflib.get_close_matches(str(kind), list(by_kind), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}.kind={kind!r} is not allowed{hint}; choose one of {list(by_kind)}")
    return _parse(by_kind[kind], value, key)


def to_dict(instance) -> dict:
    return dataclasses.asdict(instance)


def join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def _name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def _example(f: dataclasses.Field) -> str:
    example = f.metadata.get("example")
    return f", e.g. {f.name}: {example}" if example else ""
