"""Name -> entry registries, filled by a decorator where each entry is defined.

One mechanism serves the backbones (`facekd.models.registry.BACKBONES`), the distillation methods
(`facekd.distill.registry.METHODS`) and the evaluation protocols (`facekd.evaluate.protocols`)."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from facekd.errors import ConfigError

Builder = TypeVar("Builder", bound=Callable)


class Registry(Generic[Builder]):
    """Maps names to builders; `@registry.register("name")` adds one."""

    def __init__(self, kind: str, load: Callable[[], object] | None = None) -> None:
        self.kind = kind  # how errors name the choice, e.g. "--method"
        self._builders: dict[str, Builder] = {}
        self._load = load  # imports the modules whose decorators fill the registry

    def _loaded(self) -> dict[str, Builder]:
        if self._load is not None:
            load, self._load = self._load, None
            load()
        return self._builders

    def register(self, name: str) -> Callable[[Builder], Builder]:
        def add(builder: Builder) -> Builder:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            return builder

        return add

    def get(self, name: str) -> Builder:
        try:
            return self._loaded()[name]
        except KeyError:
            raise ConfigError(
                f"{self.kind}: found {name!r}, expected one of {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._loaded())

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()
