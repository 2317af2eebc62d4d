"""Command-line flags generated from a dataclass's fields, so that flags never drift from it.

Each field's help is ``field.metadata["help"]``: a field without help cannot get a
flag, and building the parser raises. The type, the default and the choices come
from the field too:

- ``Literal[...]``: one of the choices;
- ``bool``: a switch that flips the default (``--name`` for a default of False,
  ``--no-...`` for True: its help reads "do not ...");
- ``float``: seconds (>= 0; ``inf`` allowed); ``int``: a count (>= 0);
- anything else, or a float that is not seconds: a `ValueType` given per field
  (a size with binary units for memory).

Ranges and relations between fields stay the dataclass's own business
(``__post_init__``); its `ValueError` becomes a usage error. Help text may name
another field of the same dataclass in backticks (```memory_limit```): it is
shown as that field's flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

# ------------------------------------------------------------------ value types
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
#: Largest size accepted (1 EiB): far above any machine, far below int64 overflow.
MAX_SIZE = 2**60
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def _clip(text: str, limit: int = 24) -> str:
    """A flag value for an error line: never the whole of a 5000-digit paste."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912. Binary units; a bare number is bytes."""
    m = _SIZE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 512M, 2G, 1048576)")
    number, unit = m.groups()
    # Exact arithmetic: a float would turn 400 digits into inf (and a traceback).
    size = int(Fraction(number) * _UNITS[unit.lower()])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be > 0, got {text!r}")
    if size > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"size too large: {_clip(text)} (at most 1 EiB)")
    return size


def parse_seconds(text: str) -> float:
    value = parse_number(text, what="a number of seconds")
    if value < 0:
        raise argparse.ArgumentTypeError(f"seconds must be >= 0, got {text!r}")
    return value


def parse_finite_seconds(text: str) -> float:
    """Seconds that something actually waits (a delay), so ``inf`` is refused."""
    value = parse_seconds(text)
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds, got {text!r}")
    return value


def parse_port(text: str) -> int:
    value = parse_count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (0-65535): {text!r}")
    return value


def parse_number(text: str, what: str = "a number") -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
    return value


def parse_count(text: str) -> int:
    if len(text.strip()) > 18:  # int() refuses > 4300 digits with a bare ValueError anyway
        raise argparse.ArgumentTypeError(f"number too large: {_clip(text)}")
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


@dataclass(frozen=True)
class ValueType:
    """How one field's flag value is read: parser, metavar, and a note for its help."""

    parse: Callable[[str], Any]
    metavar: str
    note: str = ""


SECONDS = ValueType(parse_seconds, "SECONDS")
COUNT = ValueType(parse_count, "N")
NUMBER = ValueType(parse_number, "X")
SIZE = ValueType(parse_size, "SIZE", "K, M, G or T: binary units, 512M is 512 MiB")


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if value == math.inf:
        return "no limit"
    return str(value)


# ------------------------------------------------------------------ flag sets
class ArgumentAdder(Protocol):
    """What `FlagSet.add_to` needs of a parser or of an argument group: argparse names
    the group's class only privately, so this says the one verb it uses."""

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action: ...


@dataclass(frozen=True)
class FlagSet(Generic[T]):
    """The flags of one dataclass, and the instance they ask for.

    ``flag_names``: flags that are not ``--field-name``. ``defaults``: where this
    front end's default differs from the dataclass's (shown in the help, used when
    the flag is absent). ``value_types``: fields that are not seconds or counts.
    Values land in the namespace as ``<dest_prefix><field>``, None when absent.
    """

    cls: type[T]
    dest_prefix: str
    flag_names: Mapping[str, str] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    value_types: Mapping[str, ValueType] = field(default_factory=dict)
    #: only these fields get flags (the others are the front end's own); empty: all
    only: tuple[str, ...] = ()

    def fields(self) -> list[tuple[dataclasses.Field[Any], Any]]:
        hints = typing.get_type_hints(self.cls)
        return [(f, hints[f.name]) for f in self._flagged()]

    def _flagged(self) -> list[dataclasses.Field[Any]]:
        every = dataclasses.fields(self.cls)  # type: ignore[arg-type]
        return [f for f in every if not self.only or f.name in self.only]

    def flag(self, name: str) -> str:
        meta = self._field(name).metadata
        return str(meta.get("flag") or self.flag_names.get(name, "--" + name.replace("_", "-")))

    def _field(self, name: str) -> dataclasses.Field[Any]:
        return {f.name: f for f in dataclasses.fields(self.cls)}[name]  # type: ignore[arg-type]

    def dest(self, name: str) -> str:
        return self.dest_prefix + name

    def default(self, f: dataclasses.Field[Any]) -> Any:
        return self.defaults.get(f.name, f.default)

    def help(self, f: dataclasses.Field[Any]) -> str:
        text = f.metadata.get("help")
        if not text:
            raise RuntimeError(f"{self.cls.__name__}.{f.name} has no help (metadata['help'])")
        names = {g.name for g in dataclasses.fields(self.cls)}  # type: ignore[arg-type]
        return re.sub(
            r"`(\w+)`",
            lambda m: self.flag(m[1]) if m[1] in names else m[0],
            str(text),
        )

    def add_to(self, group: ArgumentAdder) -> None:
        """One flag per field."""
        for f, hint in self.fields():
            flag, help_text, default = self.flag(f.name), self.help(f), self.default(f)
            kwargs: dict[str, Any] = {"dest": self.dest(f.name), "default": None}
            if hint is bool:
                if flag.startswith("--no-") != (default is True):
                    raise RuntimeError(f"flag {flag} does not match the default of {f.name}")
                if default:
                    help_text = "do not " + help_text
                group.add_argument(
                    flag, action="store_const", const=not default, help=help_text, **kwargs
                )
                continue
            if f.metadata.get("action") == "append":  # a repeatable flag: a tuple of str
                group.add_argument(
                    flag,
                    action="append",
                    metavar=f.metadata.get("metavar", "TEXT"),
                    help=f"{help_text} (repeatable)",
                    **kwargs,
                )
                continue
            value_type = self.value_types.get(f.name)
            if value_type is None and hint in (str, str | None):
                value_type = ValueType(str, f.metadata.get("metavar", "TEXT"))
            if value_type is None and typing.get_origin(hint) is typing.Literal:
                kwargs["choices"] = typing.get_args(hint)
            else:
                if value_type is None:
                    value_type = {float: SECONDS, float | None: SECONDS, int: COUNT}.get(hint)
                if value_type is None:
                    raise RuntimeError(f"no flag type for {self.cls.__name__}.{f.name}: {hint!r}")
                kwargs["type"], kwargs["metavar"] = value_type.parse, value_type.metavar
                if value_type.note:
                    help_text += f" ({value_type.note})"
            if "(default:" not in help_text:  # the help may word its default itself
                help_text += f" (default: {_show_default(default)})"
            group.add_argument(flag, help=help_text, **kwargs)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The field values the flags ask for (absent flags: this front end's defaults)."""
        values = dict(self.defaults)
        for f in self._flagged():
            value = getattr(args, self.dest(f.name), None)
            if value is not None:
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return values

    def from_args(self, args: argparse.Namespace) -> T:
        """The instance the flags ask for; `ValueError` (from the dataclass) if they conflict."""
        return self.cls(**self.values(args))


__all__ = [
    "COUNT",
    "NUMBER",
    "SECONDS",
    "SIZE",
    "FlagSet",
    "ValueType",
    "parse_count",
    "parse_finite_seconds",
    "parse_number",
    "parse_port",
    "parse_seconds",
    "parse_size",
]
