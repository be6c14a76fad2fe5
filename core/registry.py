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
from rlloom.errors import ConfigError, PluginLoadError, RegistryError, component_call
from rlloom.kinds import KINDS, conform, engine_keys, nested_components

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
    ``PluginLoadError`` naming it and how to disable it; so does a plugin with a misspelled
    hook: an ``@hookimpl`` whose name is no hook, or an ``rlloom_*`` function (nearly) named
    like a hook but lacking ``@hookimpl``, which pluggy would silently ignore.
    """
    disabled = set(disable)
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_name in _builtin_modules():
        if module_name not in disabled:
            pm.register(importlib.import_module(module_name), name=module_name)
    from_entry_points: dict[str, Any] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of foreign code
            raise PluginLoadError(
                f"{_plugin_label(ep.name, ep)} failed to import from entry point '{ep.value}': "
                f"{type(exc).__name__}: {exc}. {_disable_hint(ep.name)}"
            ) from exc
        pm.register(plugin, name=ep.name)
        from_entry_points[ep.name] = ep
    _check_hook_names(pm, from_entry_points)
    return pm


def _plugin_label(name: str, ep: Any = None) -> str:
    """``plugin 'name'``, with ``(package dist)`` for an entry point that has a distribution."""
    dist = ep.dist if ep is not None else None
    return f"plugin '{name}'" + (f" (package {dist.name})" if dist is not None else "")


def _disable_hint(name: str) -> str:
    return (
        f"Disable it with `plugins.disable: [{name}]` in the config or "
        f"RLLOOM_DISABLE_PLUGINS={name} in the environment."
    )


def _spec_names(pm: pluggy.PluginManager) -> list[str]:
    return sorted(
        name for name, caller in vars(pm.hook).items()
        if not name.startswith("_") and caller.has_spec()
    )


def _check_hook_names(pm: pluggy.PluginManager, from_entry_points: Mapping[str, Any]) -> None:
    """Refuse a plugin whose hook is misspelled instead of letting pluggy ignore it."""
    known = _spec_names(pm)

    def fail(name: str, problem: str) -> None:
        ep = from_entry_points.get(name)
        hint = f" {_disable_hint(name)}" if ep is not None else ""
        raise PluginLoadError(f"{_plugin_label(name, ep)} {problem}.{hint}")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        unknown = sorted(
            caller.name for caller in pm.get_hookcallers(exc.plugin) or () if not caller.has_spec()
        )
        hook = unknown[0] if unknown else "?"
        close = difflib.get_close_matches(hook, known, n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        fail(name, f"implements unknown hook '{hook}'{suggestion}; known hooks: {', '.join(known)}")

    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        registered = {caller.name for caller in pm.get_hookcallers(plugin) or ()}
        for attr, hook in _unmarked_hooks(plugin, known):
            if attr in registered:
                continue
            rename = f" and rename it to '{hook}'" if hook != attr else ""
            fail(
                name,
                f"defines {attr}() without @hookimpl, so it is never called; decorate it with "
                f"@hookimpl (from rlloom import hookimpl){rename}",
            )


def _unmarked_hooks(plugin: Any, known: list[str]) -> list[tuple[str, str]]:
    """``(attribute, hook)`` for the plugin's own ``rlloom_*`` callables named (nearly) like a hook.

    Only callables defined by the plugin itself count (a module's own functions, a plugin
    class's own methods), so a hook function imported into a plugin module is not flagged.
    """
    if inspect.ismodule(plugin):
        home = plugin.__name__
    else:
        home = (plugin if inspect.isclass(plugin) else type(plugin)).__module__
    suffixes = {hook[len("rlloom_"):]: hook for hook in known if hook.startswith("rlloom_")}
    found = []
    for attr in sorted(dir(plugin)):
        if not attr.startswith("rlloom_"):
            continue
        try:
            value = inspect.getattr_static(plugin, attr)
        except AttributeError:
            continue
        value = getattr(value, "__func__", value)  # staticmethod/classmethod
        if not callable(value) or getattr(value, "__module__", None) != home:
            continue
        if attr in known:
            found.append((attr, attr))
            continue
        close = difflib.get_close_matches(attr[len("rlloom_"):], list(suffixes), n=1)
        if close:
            found.append((attr, suffixes[close[0]]))
    return found


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

    def label(self, kind: str, spec: Any) -> str:
        """``kind 'name' from plugin 'package.module'``: who provides the component ``spec`` names."""
        name, _ = split_spec(spec, kind)
        return f"{kind} '{name}' from plugin '{self.get(kind, name).plugin}'"

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
        engine_keys(kind, params, path)
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
        for param, nested_kind in nested_components(entry.factory).items():
            if param in params:
                self.bind(nested_kind, params[param], f"{path}.{param}")
        return entry, params

    def build(self, kind: str, spec: Any, path: str | None = None) -> Any:
        """Build the component ``spec`` names, nested components first, and check it against
        its kind's contract (``kinds.conform``)."""
        path = path or kind
        entry, params = self.bind(kind, spec, path)
        for param, nested_kind in nested_components(entry.factory).items():
            if param in params:
                params[param] = self.build(nested_kind, params[param], f"{path}.{param}")
        try:
            with component_call(f"{path}: {self.label(kind, spec)}"):
                component = entry.factory(**params)
        except ConfigError as exc:  # the factory refused a value (ParameterError)
            raise ConfigError(f"{path}: {kind} '{entry.name}': {exc}") from exc
        conform(kind, component, f"{path} ('{entry.name}' from plugin '{entry.plugin}')")
        return component


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
