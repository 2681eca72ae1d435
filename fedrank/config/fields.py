"""The machinery behind every configuration section: declared fields, checked generically.

A section is a frozen dataclass whose fields are declared with :func:`setting`: a
default, a one-line description, and optional bounds. The flat key a user writes in a
scenario file, in ``flwr run --run-config`` or as a ``fedrank simulate`` flag is the
section's ``PREFIX`` plus the dashed field name, unless the field names its own
``key`` (``dp`` for ``DpConfig.mode``). :func:`check_section` validates every declared
field of a section (type, ``Literal`` choices, bounds) so that sections only add the
rules that tie fields together.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol, get_args, get_origin

from fedrank.errors import ConfigError

RunConfigValue = bool | int | float | str
"""A value Flower run config (and a flat scenario file) can hold."""


class Section(Protocol):
    """A configuration section: a frozen dataclass with a key prefix."""

    PREFIX: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


def setting(
    default: RunConfigValue,
    help: str,
    *,
    key: str | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Declare one field of a section.

    Parameters
    ----------
    default : bool, int, float or str
        The value when the user gives none (its type is the field's type on the wire).
    help : str
        One line for ``--help`` and the documentation.
    key : str, optional
        The flat key (default: the section prefix + the dashed field name).
    low, high : float, optional
        Inclusive bounds of a number, exclusive with ``low_open`` / ``high_open``.
    """
    meta = {
        "help": help,
        "key": key,
        "low": low,
        "high": high,
        "low_open": low_open,
        "high_open": high_open,
    }
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One flat key: where it lives and what it accepts."""

    key: str
    section: str
    name: str
    default: RunConfigValue
    help: str
    choices: tuple[str, ...]


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def flat_key(section: type[Section], field: dataclasses.Field[Any]) -> str:
    """The flat key of ``field`` of ``section``."""
    return str(field.metadata.get("key") or section.PREFIX + _dashed(field.name))


@functools.cache
def _hints(section: type[Section]) -> dict[str, Any]:
    return typing.get_type_hints(section)


def choices_of(section: type[Section], name: str) -> tuple[str, ...]:
    """The allowed values of a ``Literal`` field (empty for any other)."""
    hint = _hints(section)[name]
    if get_origin(hint) is Literal:
        return tuple(str(v) for v in get_args(hint))
    return ()


def fields_of(section_name: str, section: type[Section]) -> list[FieldInfo]:
    """Every declared field of a section, as :class:`FieldInfo`."""
    return [
        FieldInfo(
            key=flat_key(section, f),
            section=section_name,
            name=f.name,
            default=f.default,  # type: ignore[arg-type]  # setting() always gives one
            help=str(f.metadata.get("help", "")),
            choices=choices_of(section, f.name),
        )
        for f in dataclasses.fields(section)
    ]


def is_number(value: object) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def coerce(key: str, value: object, default: RunConfigValue) -> RunConfigValue:
    """``value`` as the type of ``default`` (an int is accepted where a float is expected).

    Raises
    ------
    ConfigError
        The value has another type.
    """
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        try:
            return float(value)
        except OverflowError as err:  # an int too large for a float
            raise ConfigError(key, f"must be a number a float can hold, got {value!r}") from err
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


def _bounds_text(meta: Mapping[str, Any]) -> str:
    low, high = meta["low"], meta["high"]
    left = "(" if meta["low_open"] else "["
    right = ")" if meta["high_open"] else "]"
    lo = "-inf" if low is None else f"{low:g}"
    hi = "inf" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def check_section(section: Section) -> None:
    """Validate every declared field of ``section``: type, choices, bounds.

    Raises
    ------
    ConfigError
        Naming the flat key and the value at fault.
    """
    kind = type(section)
    for field in dataclasses.fields(section):
        key = flat_key(kind, field)
        value = getattr(section, field.name)
        checked = coerce(key, value, field.default)  # type: ignore[arg-type]
        if checked is not value and checked != value:
            object.__setattr__(section, field.name, checked)
        value = checked
        allowed = choices_of(kind, field.name)
        if allowed and value not in allowed:
            raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}")
        meta = field.metadata
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        low, high = meta.get("low"), meta.get("high")
        too_low = low is not None and (value <= low if meta["low_open"] else value < low)
        too_high = high is not None and (value >= high if meta["high_open"] else value > high)
        if too_low or too_high:
            raise ConfigError(key, f"must lie in {_bounds_text(meta)}, got {value!r}")
