"""Typed method options: one frozen dataclass per method, declared with `option(...)` fields.

Each field carries its default, type, bounds and a one-line help that cites where the default
comes from. `parse_options` builds the dataclass from the config's `distill.options` mapping with
the config loader's own coercer, so `1e-3` is a float here as everywhere, and every problem is one
line naming the method, the field, what was found and what was expected.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from facekd.errors import ConfigError
from facekd.train.config import coerce


def option(default: Any, help: str, *, low: float | None = None, above: float | None = None,
           high: float | None = None, choices: tuple | None = None) -> Any:
    """A method option: `low`/`high` are inclusive bounds, `above` an exclusive lower bound,
    `choices` the allowed values (of the value itself, or of every element of a tuple)."""
    metadata = {"help": help, "low": low, "above": above, "high": high, "choices": choices}
    return dataclasses.field(default=default, metadata=metadata)


def options_error(method: str, name: str, found: Any, expected: str) -> ConfigError:
    shown = list(found) if isinstance(found, tuple) else found
    return ConfigError(f"distill.options: {method}.{name}: found {shown!r}, expected {expected}")


def _check_field(method: str, field: dataclasses.Field, value: Any) -> None:
    rules = field.metadata
    choices = rules.get("choices")
    if choices is not None:
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if item not in choices:
                raise options_error(method, field.name, value, f"{'values' if isinstance(value, tuple) else 'one'} "
                                    f"of {', '.join(map(str, choices))}")
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        if rules.get("low") is not None and number < rules["low"]:
            raise options_error(method, field.name, value, f"a value >= {rules['low']}")
        if rules.get("above") is not None and number <= rules["above"]:
            raise options_error(method, field.name, value, f"a value > {rules['above']}")
        if rules.get("high") is not None and number > rules["high"]:
            raise options_error(method, field.name, value, f"a value <= {rules['high']}")


def parse_options(options_type: type, values: dict[str, Any] | None, method: str) -> Any:
    """The method's options from a plain mapping: unknown names, wrong types and bounds refused.

    An options class may add `problem() -> (field, found, expected) | None` for rules that span
    fields (e.g. m_min <= m_max)."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    hints = typing.get_type_hints(options_type)
    unknown = sorted(map(str, set(values) - set(fields)))
    if unknown:
        raise ConfigError(f"distill.options: {method} has no option(s) {', '.join(unknown)}; "
                          f"expected some of {', '.join(fields) or '(none)'}")
    parsed = {}
    for name, value in values.items():
        try:
            parsed[name] = coerce(value, hints[name], name)
        except ConfigError as error:
            raise options_error(method, name, value, _type_name(hints[name])) from error
        _check_field(method, fields[name], parsed[name])
    options = options_type(**parsed)
    problem = getattr(options, "problem", None)
    found = problem() if problem is not None else None
    if found is not None:
        raise options_error(method, *found)
    return options


def _type_name(expected: Any) -> str:
    if typing.get_origin(expected) is tuple:
        return f"a list of {typing.get_args(expected)[0].__name__}"
    return getattr(expected, "__name__", str(expected))


def describe_options(options_type: type) -> list[str]:
    """One line per option: `name: type = default  help`, for `--list-methods`."""
    hints = typing.get_type_hints(options_type)
    lines = []
    for field in dataclasses.fields(options_type):
        default = field.default
        shown = list(default) if isinstance(default, tuple) else default
        lines.append(f"{field.name}: {_type_name(hints[field.name])} = {shown!r}  {field.metadata.get('help', '')}")
    return lines
