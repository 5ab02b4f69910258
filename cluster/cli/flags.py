"""Flags from config dataclasses: a flag's default is the field's default, its help the field's
docstring (unless given), so the command line and the library cannot disagree."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
from typing import Any

__all__ = ["add_flag", "add_config_flags", "config_from", "parse_config", "field_default",
           "field_doc"]


@functools.cache
def _docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def field_doc(cls: type, name: str) -> str:
    """The docstring of field `name` of dataclass `cls` ("" if it has none)."""
    if name not in {f.name for f in dataclasses.fields(cls)}:
        raise AttributeError(f"{cls.__name__} has no field {name!r}")
    return _docs(cls).get(name, "")


def field_default(cls: type, name: str) -> Any:
    """The default of field `name` of dataclass `cls` (its factory's value for a factory)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise AttributeError(f"{cls.__name__} has no field {name!r}")


def add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, cls: type,
             name: str, **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(flag, ...)` with the default and (unless `help` is given) the help
    of field `name` of `cls`, stored under the field's name. A bool field with a False default
    becomes a store_true switch."""
    default = field_default(cls, name)
    kwargs.setdefault("help", field_doc(cls, name))
    kwargs.setdefault("dest", name)
    if isinstance(default, bool) and "action" not in kwargs:
        if default:
            raise ValueError(f"{cls.__name__}.{name} defaults to True: give the flag an action")
        return parser.add_argument(flag, action="store_true", **kwargs)
    if "choices" not in kwargs and "action" not in kwargs:
        kwargs.setdefault("metavar", flag.lstrip("-").upper().replace("-", "_"))
    if "type" not in kwargs and "action" not in kwargs and isinstance(default, int | float):
        kwargs["type"] = type(default)
    return parser.add_argument(flag, default=default, **kwargs)



def add_config_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                     **per_field: dict[str, Any]) -> None:
    """One flag per field of dataclass `cls`, in field order (`--image-size` for `image_size`),
    through add_flag; `per_field[name]` holds more add_argument keywords for that field's flag
    (a `type` where the default is None, `choices`, `required`)."""
    unknown = set(per_field) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise AttributeError(f"{cls.__name__} has no fields {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        add_flag(parser, "--" + f.name.replace("_", "-"), cls, f.name, **per_field.get(f.name, {}))


def config_from(cls: type, args: argparse.Namespace) -> Any:
    """An instance of dataclass `cls` from the parsed flags stored under its fields' names
    (as add_flag stores them); its own checks run, and raise, as it is made."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def parse_config(parser: argparse.ArgumentParser, cls: type, argv: list[str] | None = None
                 ) -> Any:
    """Parse `argv` and make the `cls` config of it; a setting its checks refuse ends the
    program as a bad flag does: `error: ...` on stderr, exit status 2."""
    args = parser.parse_args(argv)
    try:
        return config_from(cls, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
