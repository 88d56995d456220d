"""The method registry: `@register_distiller` on a class in `facekd/distill/methods/` makes it `--method NAME`."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import sys

from facekd.distill.distiller import TEACHER_EXTRAS, Distiller
from facekd.distill.options import describe_options, parse_options
from facekd.distill.teacher import TEACHER_OUTPUTS
from facekd.registry import Registry


def _import_methods() -> None:
    from facekd.distill import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")


METHODS: Registry[type[Distiller]] = Registry("--method", load=_import_methods)


def register_distiller(cls: type[Distiller]) -> type[Distiller]:
    """Class decorator: make a method selectable as `--method cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__qualname__} must set `name` to be registered")
    unknown = (cls.teacher_needs - TEACHER_OUTPUTS) | (cls.teacher_extras - TEACHER_EXTRAS)
    if unknown:
        raise TypeError(f"{cls.__qualname__} names unknown teacher outputs {sorted(unknown)}")
    if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):
        raise TypeError(f"{cls.__qualname__}.Options must be a frozen dataclass")
    return METHODS.register(cls.name)(cls)


def distiller_class(name: str) -> type[Distiller]:
    return METHODS.get(name)


def available_methods() -> list[str]:
    return sorted(METHODS.names())


def method_options(name: str, values: dict | None):
    """The typed options of method `name` from the config's `distill.options` mapping."""
    return parse_options(distiller_class(name).Options, values, name)


def describe_methods() -> str:
    """Every method, what it needs from the teacher, and its options with their defaults."""
    lines = []
    for name in available_methods():
        method = distiller_class(name)
        summary = (sys.modules[method.__module__].__doc__ or "").strip().splitlines()
        lines.append(f"{name}: {summary[0] if summary else ''}")
        lines.append(f"  needs from the teacher: {method.teacher_summary()}")
        lines.extend(f"  {line}" for line in describe_options(method.Options) or ["(no options)"])
    return "\n".join(lines)
