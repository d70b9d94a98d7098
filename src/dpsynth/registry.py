"""Named factories that other packages can extend through entry points.

Encoders, decoders and clusterers are each a :class:`Registry`. Built-ins register with a
decorator; a third-party package declares ``name = "package.module:factory"`` under the
registry's entry point group, and it is loaded on first lookup. A plugin that fails to
load is left out of :meth:`Registry.names` and its lookup names the failure; it never
breaks the lookup of another name.

The run configuration checks its registry names (``encoder.name``, ``decode.decoder``,
``model.clusterer``) with :meth:`Registry.problem` when it is validated, so an unknown
name is one ``invalid configuration`` line listing the available names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class Registry:
    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._items: dict[str, Any] = {}
        #: Plugins whose entry point failed to load: name -> what went wrong.
        self._broken: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: make ``factory`` available as ``name``."""

        def deco(factory: Any) -> Any:
            self._items[name] = factory
            return factory

        return deco

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)
        self._broken.pop(name, None)

    def _load_plugins(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            if ep.name in self._items or ep.name in self._broken:
                continue
            try:
                self._items[ep.name] = ep.load()
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not hide others
                self._broken[ep.name] = (f"the {self.kind} plugin {ep.name!r} ({ep.value}) "
                                         f"failed to load: {type(exc).__name__}: {exc}")

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def problem(self, name: object, *, parametrised: bool = False) -> str | None:
        """Why ``name`` cannot be looked up (unknown, listing the available names, or a
        plugin that failed to load), or None. ``parametrised``: ``"prefix:spec"`` names a
        registered ``prefix`` (encoders: ``"open_clip:ViT-B-32:laion2b_s34b_b79k"``)."""
        if not isinstance(name, str) or not name:
            return f"a {self.kind} name must be a non-empty string, got {name!r}"
        if name not in self._items:
            self._load_plugins()
        candidates = [name]
        if parametrised and ":" in name:
            candidates.append(name.partition(":")[0])
        if any(c in self._items for c in candidates):
            return None
        for c in candidates:
            if c in self._broken:
                return self._broken[c]
        return f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}"

    def get(self, name: str) -> Any:
        if name not in self._items:
            self._load_plugins()
        if name not in self._items:
            raise KeyError(self.problem(name))
        return self._items[name]


#: The registries a run configuration names, by kind: the package whose import registers
#: the built-ins, the module and attribute of the :class:`Registry`, and whether names may
#: be parametrised (``prefix:spec``).
_CONFIG_REGISTRIES = {
    "encoder": ("dpsynth.encoders", "dpsynth.encoders.base", "ENCODERS", True),
    "decoder": ("dpsynth.decoders", "dpsynth.decoders.base", "DECODERS", False),
    "clusterer": ("dpsynth.clustering", "dpsynth.clustering.registry", "CLUSTERERS", False),
}


def name_problem(kind: str, name: object) -> str | None:
    """Why ``name`` is not a usable ``kind`` ("encoder", "decoder", "clusterer"), listing
    the available names, or None. Imports the registry's package (its built-ins register on
    import) only when called: the configuration, which calls it, is imported early."""
    import importlib

    package, module, attribute, parametrised = _CONFIG_REGISTRIES[kind]
    importlib.import_module(package)
    registry: Registry = getattr(importlib.import_module(module), attribute)
    return registry.problem(name, parametrised=parametrised)


@functools.cache
def _options_model(kind: str, name: str, factory: Any):
    """The typed options of a factory, a pydantic model with unknown keys forbidden:
    ``factory.options_model`` if it declares one, else built from the signature of
    ``factory.options_of`` (the class it builds) or of the factory itself. None when the
    factory takes any keyword (``**kwargs`` and nothing declared: a plugin's choice)."""
    import inspect
    import typing

    from pydantic import ConfigDict, create_model

    declared = getattr(factory, "options_model", None)
    if declared is not None:
        return declared
    target = getattr(factory, "options_of", factory)
    function = target.__init__ if inspect.isclass(target) else target
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: untyped
        hints = {}
    fields: dict[str, Any] = {}
    for p in signature.parameters.values():
        if p.name in ("self", "spec") or p.kind in (p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        if p.kind is p.VAR_KEYWORD:
            return None
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    label = "".join(part.capitalize() for part in str(name).replace("-", "_").split("_"))
    return create_model(f"{label}{kind.capitalize()}Options",
                        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **fields)


def options_problem(kind: str, name: str, options: dict[str, Any]) -> str | None:
    """Why ``options`` are not options of the ``kind`` ``name`` (an unknown key: another
    plugin's option; a value of the wrong type), or None. So an option reaches only the
    plugins that have it."""
    import importlib

    from pydantic import ValidationError

    package, module, attribute, parametrised = _CONFIG_REGISTRIES[kind]
    importlib.import_module(package)
    registry: Registry = getattr(importlib.import_module(module), attribute)
    key = name
    if parametrised and name not in registry and ":" in name:
        key = name.partition(":")[0]
    model = _options_model(kind, key, registry.get(key))
    if model is None:
        return None
    try:
        model.model_validate(options)
    except ValidationError as exc:
        allowed = ", ".join(sorted(model.model_fields)) or "none"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: "
            + ("not an option of this " + kind if e["type"] == "extra_forbidden"
               else e["msg"]) for e in exc.errors())
        return f"{kind}.options for {kind} {name!r}: {problems} (its options: {allowed})"
    return None
