"""The registry: every component kind's ``{name: factory}`` as the plugins registered them.

The plugin manager registers the builtin modules of ``rlloom.plugins`` and then the
entry-point group ``rlloom.plugins`` exactly alike; the registry asks each registration hook
of each plugin for its factories. A third-party plugin that cannot load (an import error, a
misspelled hook, a hook that raises) and a name two plugins both register in one kind do not
block the rest: they are kept as problems that ``rlloom list`` shows, and only a config that
names the broken part stops, with the problem in its one-line error.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
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
from rlloom.kinds import KINDS, annotation_name, conform, engine_keys, fits, nested_components

ENTRY_POINT_GROUP = "rlloom.plugins"


@dataclass(frozen=True)
class Plugin:
    """A plugin: its name, the package (distribution) that provides it and that package's
    version (None for a plugin registered by hand), and why it failed to load (None: loaded)."""

    name: str
    package: str | None = None
    version: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Entry:
    """One registered component: where it lives and who provided it. ``error`` says why it
    cannot be used (two plugins register its name); the registry refuses to bind it then."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    error: str | None = None

    @property
    def summary(self) -> str:
        """The first line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager with rlloom's hookspecs, plus what rlloom knows of its plugins:
    ``plugins`` (name → ``Plugin``: package and version) and ``failed`` (the plugins that did
    not load, each with its error)."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.plugins: dict[str, Plugin] = {}
        self.failed: list[Plugin] = []


def _builtin_modules() -> list[str]:
    import rlloom.plugins as package

    return sorted(
        f"{package.__name__}.{info.name}"
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_")
    )


def make_plugin_manager(disable: Iterable[str] = ()) -> PluginManager:
    """A plugin manager with the builtin plugins and then every installed entry point (by name).

    ``disable`` names plugins to skip: an entry point's name or a builtin module's full name
    (``rlloom.plugins.dapo``). A third-party plugin that fails to import, or has a misspelled
    hook (an ``@hookimpl`` whose name is no hook, or an ``rlloom_*`` function (nearly) named
    like a hook but lacking ``@hookimpl``, which pluggy would silently ignore), is left out and
    recorded in ``failed`` with a message naming it and how to disable it. A builtin plugin
    with a misspelled hook raises ``PluginLoadError``.
    """
    disabled = set(disable)
    pm = PluginManager()
    known = _spec_names(pm)
    version = package_version("rlloom")
    for module_name in _builtin_modules():
        if module_name not in disabled:
            register_checked(pm, importlib.import_module(module_name), module_name)
            pm.plugins[module_name] = Plugin(module_name, "rlloom", version)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        if ep.name in disabled or pm.has_plugin(ep.name):
            continue
        info = Plugin(ep.name, ep.dist.name, ep.dist.version) if ep.dist is not None else Plugin(ep.name)
        try:
            plugin = ep.load()
        except Exception as exc:  # any import-time failure of foreign code
            pm.failed.append(_failure(info, f"failed to import from entry point '{ep.value}': "
                                            f"{type(exc).__name__}: {exc}"))
            continue
        pm.register(plugin, name=ep.name)
        problem = _hook_problem(pm, ep.name, known)
        if problem:
            pm.unregister(name=ep.name)
            pm.failed.append(_failure(info, problem))
        else:
            pm.plugins[ep.name] = info
    return pm


def package_version(package: str) -> str | None:
    """The installed version of distribution ``package`` (None when it is not installed)."""
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return None


def register_checked(pm: PluginManager, plugin: Any, name: str | None = None) -> str:
    """Register ``plugin`` (under ``name``, else pluggy's name for it); a misspelled hook
    raises ``PluginLoadError`` naming the plugin and the hook. Returns its name."""
    name = pm.register(plugin, name=name)
    problem = _hook_problem(pm, name, _spec_names(pm))
    if problem:
        pm.unregister(name=name)
        raise PluginLoadError(f"plugin '{name}' {problem}.")
    return name


def _failure(info: Plugin, problem: str) -> Plugin:
    """``info`` with its error: the plugin, what is wrong, and how to disable it."""
    label = f"plugin '{info.name}'" + (f" (package {info.package})" if info.package else "")
    return Plugin(info.name, info.package, info.version, f"{label} {problem}. {_disable_hint(info.name)}")


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


def _hook_problem(pm: pluggy.PluginManager, name: str, known: list[str]) -> str | None:
    """What is wrong with the hooks of plugin ``name``, or None: an ``@hookimpl`` named like no
    hook, or an ``rlloom_*`` hook function without ``@hookimpl`` (pluggy would ignore both)."""
    plugin = pm.get_plugin(name)
    callers = pm.get_hookcallers(plugin) or ()
    unknown = sorted(caller.name for caller in callers if not caller.has_spec())
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else ""
        return f"implements unknown hook '{unknown[0]}'{suggestion}; known hooks: {', '.join(known)}"
    registered = {caller.name for caller in callers}
    for attr, hook in _unmarked_hooks(plugin, known):
        if attr not in registered:
            rename = f" and rename it to '{hook}'" if hook != attr else ""
            return (f"defines {attr}() without @hookimpl, so it is never called; decorate it with "
                    f"@hookimpl (from rlloom import hookimpl){rename}")
    return None


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
    """Kinds → names → ``Entry``, and the plugins behind them; built from a plugin manager by
    ``Registry.from_plugins``. ``failed`` are the plugins that did not load, with their errors."""

    def __init__(
        self,
        entries: Mapping[str, Mapping[str, Entry]],
        plugins: Mapping[str, Plugin] | None = None,
        failed: Iterable[Plugin] = (),
    ):
        self._entries = {kind: dict(names) for kind, names in entries.items()}
        self._plugins = dict(plugins or {})
        self.failed = list(failed)

    @classmethod
    def from_plugins(cls, pm: PluginManager) -> "Registry":
        """Ask every registration hook of every plugin for its factories. A plugin whose hook
        raises is left out (recorded in ``failed``); a name several plugins register in one kind
        becomes an ``Entry`` with an ``error`` naming them all."""
        offers: list[tuple[str, str, Any, str]] = []  # (kind, name, factory, plugin)
        failed = list(pm.failed)
        broken: set[str] = set()

        def ask(impl: Any, hook: str) -> Mapping[str, Any]:
            try:
                offered = impl.function() or {}
                if not isinstance(offered, Mapping):
                    raise TypeError(f"returned {type(offered).__name__}, expected {{name: factory}}")
                return offered
            except Exception as exc:  # any failure of foreign code
                broken.add(impl.plugin_name)
                info = pm.plugins.get(impl.plugin_name, Plugin(impl.plugin_name))
                failed.append(_failure(info, f"failed in its hook {hook}: {type(exc).__name__}: {exc}"))
                return {}

        for kind in KINDS.values():
            for impl in getattr(pm.hook, kind.hook).get_hookimpls():
                offers += [(kind.name, n, f, impl.plugin_name) for n, f in ask(impl, kind.hook).items()]
        for impl in pm.hook.rlloom_kinds.get_hookimpls():
            for kind_name, factories in ask(impl, "rlloom_kinds").items():
                offers += [(kind_name, n, f, impl.plugin_name) for n, f in factories.items()]

        owners: dict[tuple[str, str], list[tuple[Any, str]]] = {}
        for kind, name, factory, plugin in offers:
            if plugin not in broken:
                owners.setdefault((kind, name), []).append((factory, plugin))
        entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        for (kind, name), offered in owners.items():
            factory, plugin = offered[0]
            error = None
            if len(offered) > 1:
                by = " and by ".join(f"plugin '{p}'" for _, p in offered)
                error = (f"{kind} '{name}' is registered twice: by {by}. Rename one, or disable one "
                         f"with `plugins.disable`.")
                plugin = ", ".join(p for _, p in offered)
            elif not callable(factory):
                error = f"{kind} '{name}' from plugin '{plugin}' is not callable"
            entries.setdefault(kind, {})[name] = Entry(kind, name, factory, plugin, error)
        plugins = {name: info for name, info in pm.plugins.items() if name not in broken}
        return cls(entries, plugins, failed)

    def plugin(self, name: str) -> Plugin:
        """What is known of plugin ``name``: its package and version (None when registered by hand)."""
        return self._plugins.get(name, Plugin(name))

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
        """The entry for ``name``; an unknown name lists the kind's names, the closest, and the
        plugins that failed to load; a name several plugins register says so."""
        section = self._section(kind)
        if name not in section:
            not_loaded = "".join(f"; not loaded: {p.error}" for p in self.failed)
            raise RegistryError(_unknown(kind, name, sorted(section)) + not_loaded)
        if section[name].error:
            raise RegistryError(section[name].error)
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
        signature = _signature(entry.factory)
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
        nested = nested_components(entry.factory)
        for param, nested_kind in nested.items():
            if param in params:
                self.bind(nested_kind, params[param], f"{path}.{param}")
        for key, value in params.items():
            annotation = signature.parameters[key].annotation if key in signature.parameters else Any
            if key not in nested and not fits(value, annotation):
                raise ConfigError(
                    f"{path}.{key}: {kind} '{name}' takes {key} as {annotation_name(annotation)}, "
                    f"got {value!r} ({type(value).__name__})"
                )
        return entry, params

    def entries_of(self, kind: str, spec: Any, path: str) -> list[Entry]:
        """The entry ``spec`` names and those of its nested components (a wrapped sampler)."""
        entry, params = self.bind(kind, spec, path)
        found = [entry]
        for param, nested_kind in nested_components(entry.factory).items():
            if param in params:
                found += self.entries_of(nested_kind, params[param], f"{path}.{param}")
        return found

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


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    """The factory's signature with its annotations resolved (left as written when they
    cannot be, e.g. a name only imported for type checking)."""
    try:
        return inspect.signature(factory, eval_str=True)
    except Exception:  # an annotation naming something the factory's module does not define
        return inspect.signature(factory)


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
def _cached(disable: tuple[str, ...]) -> tuple[PluginManager, Registry]:
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


def get_plugin_manager(disable: Iterable[str] = ()) -> PluginManager:
    """The plugin manager behind ``get_registry(disable)``, for calling lifecycle hooks."""
    return _cached(_disable_set(disable))[0]
