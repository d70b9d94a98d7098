"""Named factories that other packages can extend through entry points.

Encoders, decoders and clusterers are each a :class:`Registry`. Built-ins register with a
decorator; a third-party package declares ``name = "package.module:factory"`` under the
registry's entry point group, and it is loaded on first lookup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: make ``factory`` available as ``name``."""

        def deco(factory: Any) -> Any:
            self._items[name] = factory
            return factory

        return deco

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    def _load_plugins(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def get(self, name: str) -> Any:
        if name not in self._items:
            self._load_plugins()
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._items[name]
