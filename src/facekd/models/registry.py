"""Name -> builder registries, filled by a decorator where each builder is defined."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from facekd.errors import ConfigError

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Maps names to builders; `@registry.register("name")` adds one."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Builder] = {}

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str) -> Builder:
        try:
            return self._builders[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind}: found {name!r}, expected one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders


BACKBONES: Registry[Callable] = Registry("backbone")
