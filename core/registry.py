"""The registry: every component kind's ``{name: factory}`` as the plugins registered them.

The plugin manager registers the builtin modules of ``rlloom.plugins`` and then the
entry-point group ``rlloom.plugins`` exactly alike; the registry asks each registration hook
of each plugin for its factories, refusing a name two plugins both register in one kind.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Mapping

import pluggy

from rlloom import hookspecs
from rlloom.errors import ConfigError, PluginLoadError, RegistryError
from rlloom.kinds import KINDS

ENTRY_POINT_GROUP = "rlloom.plugins"


@dataclass(frozen=True)
class Entry:
    """One registered component: where it lives and who provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def summary(self) -> str:
        """The first line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


def _builtin_modules() -> list[str]:
    import rlloom.plugins as package

    return sorted(
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    )


def make_plugin_manager(disable: Iterable[str] = ()) -> pluggy.PluginManager:
    """A plugin manager with the builtin plugins and then every installed entry point.

    ``disable`` names plugins to skip: an entry point's name or a builtin module's full name
    (``rlloom.plugins.dapo``). A third-party plugin that fails to import raises
    ``PluginLoadError`` naming it and how to disable it.
    """
    disabled = set(disable)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in _builtin_modules():
        if module_name not in disabled:
            pm.register(importlib.import_module(module_name), name=module_name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of foreign code
            dist = f" (package {ep.dist.name})" if ep.dist is not None else ""
            raise PluginLoadError(
                f"plugin '{ep.name}'{dist} failed to import from entry point '{ep.value}': "
                f"{type(exc).__name__}: {exc}. Disable it with `plugins.disable: [{ep.name}]` in "
                f"the config or RLLOOM_DISABLE_PLUGINS={ep.name} in the environment."
            ) from exc
        pm.register(plugin, name=ep.name)
    return pm


class Registry:
    """Kinds → names → ``Entry``; built from a plugin manager by ``Registry.from_plugins``."""

    def __init__(self, entries: Mapping[str, Mapping[str, Entry]]):
        self._entries = {kind: dict(names) for kind, names in entries.items()}

    @classmethod
    def from_plugins(cls, pm: pluggy.PluginManager) -> "Registry":
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

        def add(kind: str, name: str, factory: Callable, plugin: str) -> None:
            section = entries.setdefault(kind, {})
            if name in section:
                raise RegistryError(
                    f"{kind} '{name}' is registered twice: by plugin '{section[name].plugin}' and "
                    f"by plugin '{plugin}'. Rename one, or disable one with `plugins.disable`."
                )
            if not callable(factory):
                raise RegistryError(f"{kind} '{name}' from plugin '{plugin}' is not callable")
            section[name] = Entry(kind, name, factory, plugin)

        for kind in KINDS.values():
            for impl in reversed(getattr(pm.hook, kind.hook).get_hookimpls()):
                for name, factory in (impl.function() or {}).items():
                    add(kind.name, name, factory, impl.plugin_name)
        for impl in reversed(pm.hook.rlloom_kinds.get_hookimpls()):
            for kind_name, factories in (impl.function() or {}).items():
                for name, factory in factories.items():
                    add(kind_name, name, factory, impl.plugin_name)
        return cls(entries)

    def kinds(self) -> list[str]:
        return list(self._entries)

    def names(self, kind: str) -> list[str]:
        return sorted(self._section(kind))

    def entries(self, kind: str | None = None) -> list[Entry]:
        kinds = [kind] if kind is not None else self.kinds()
        return [self._section(k)[n] for k in kinds for n in self.names(k)]

    def _section(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            raise RegistryError(_unknown("kind", kind, sorted(self._entries)))
        return self._entries[kind]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name``; an unknown name lists the kind's names and the closest."""
        section = self._section(kind)
        if name not in section:
            raise RegistryError(_unknown(kind, name, sorted(section)))
        return section[name]

    def bind(self, kind: str, spec: Any, path: str) -> tuple[Entry, dict[str, Any]]:
        """Check ``spec`` (``name`` or ``{name: ..., **params}``) against its factory.

        Returns the entry and the factory's keyword arguments, with nested component specs
        (declared by a factory's ``nested_components = {param: kind}``) still as specs.
        Raises ``ConfigError`` naming ``path``, the component and the accepted keys.
        """
        name, params = split_spec(spec, path)
        try:
            entry = self.get(kind, name)
        except RegistryError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for key in KINDS[kind].reserved if kind in KINDS else ():
            params.pop(key, None)
        signature = inspect.signature(entry.factory)
        accepted = [
            p.name
            for p in signature.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        for key in params:
            if key not in accepted and not takes_any:
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"{path}.{key}: {kind} '{name}' takes no parameter '{key}'{hint}; "
                    f"accepted keys: {', '.join(accepted) or 'none'}"
                )
        try:
            signature.bind(**params)
        except TypeError as exc:
            raise ConfigError(
                f"{path}: {kind} '{name}': {exc}; accepted keys: {', '.join(accepted) or 'none'}"
            ) from None
        for param, nested_kind in getattr(entry.factory, "nested_components", {}).items():
            if param in params:
                self.bind(nested_kind, params[param], f"{path}.{param}")
        return entry, params

    def build(self, kind: str, spec: Any, path: str | None = None) -> Any:
        """Build the component ``spec`` names, nested components first."""
        path = path or kind
        entry, params = self.bind(kind, spec, path)
        for param, nested_kind in getattr(entry.factory, "nested_components", {}).items():
            if param in params:
                params[param] = self.build(nested_kind, params[param], f"{path}.{param}")
        try:
            return entry.factory(**params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: {kind} '{entry.name}': {exc}") from exc


def split_spec(spec: Any, path: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``{name: ..., **params}`` → (name, params as plain Python values)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{path}: a component needs `name: <component>`, got {dict(spec)}")
        return name, params
    raise ConfigError(f"{path}: expected a component name or a mapping with `name`, got {spec!r}")


def _unknown(kind: str, name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {kind} '{name}'{hint}; known: {', '.join(names) or 'none'}"


@lru_cache(maxsize=8)
def _cached(disable: tuple[str, ...]) -> tuple[pluggy.PluginManager, Registry]:
    pm = make_plugin_manager(disable)
    return pm, Registry.from_plugins(pm)


def _disable_set(disable: Iterable[str]) -> tuple[str, ...]:
    extra = [n for n in os.environ.get("RLLOOM_DISABLE_PLUGINS", "").split(",") if n]
    return tuple(sorted(set(disable) | set(extra)))


def get_registry(disable: Iterable[str] = ()) -> Registry:
    """The registry of the installed plugins less ``disable`` (cached per disable set).

    The environment variable ``RLLOOM_DISABLE_PLUGINS`` (comma-separated) adds to ``disable``.
    """
    return _cached(_disable_set(disable))[1]


def get_plugin_manager(disable: Iterable[str] = ()) -> pluggy.PluginManager:
    """The plugin manager behind ``get_registry(disable)``, for calling lifecycle hooks."""
    return _cached(_disable_set(disable))[0]
