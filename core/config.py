"""Config loading and validation.

A config is a YAML file read with OmegaConf, given by path or by the name of a preset. The
presets ship with the package (``rlloom.presets``); a name is looked up as a file first, then
as a preset, so ``rlloom train grpo`` works from any directory and a path still works. A
config may start from presets with ``defaults: [grpo]`` (names resolved next to the file, then
among the presets); presets merge in order, then the file, then ``key=value`` overrides. A
component is given under its kind's key as ``name`` or ``{name: ..., **params}``; the params
are exactly the factory's keyword arguments. Validation binds them without building anything.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import rlloom.presets
from rlloom.errors import ConfigError
from rlloom.kinds import KINDS
from rlloom.registry import Registry, get_registry

PRESET_DIR = Path(rlloom.presets.__file__).resolve().parent
"""Where the presets are: the package's ``presets`` (the project's ``configs/`` in a checkout)."""


@dataclass(frozen=True)
class Preset:
    """A preset: its name (the file's stem) and its one-line description (the comment line
    after the first, which is the command that runs it)."""

    name: str
    description: str


def presets() -> list[Preset]:
    """Every preset shipped with the package, sorted by name."""
    found = []
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        comments = [line[1:].strip() for line in path.read_text().splitlines()[:2] if line.startswith("#")]
        found.append(Preset(path.stem, comments[1] if len(comments) > 1 else ""))
    return found


def _find_preset(name: str, base_dir: Path, where: str) -> Path:
    """``name`` (or ``name.yaml``) in ``base_dir``, else the preset of that name."""
    for directory in (base_dir, PRESET_DIR):
        for candidate in (directory / name, directory / f"{name}.yaml"):
            if candidate.is_file():
                return candidate
    names = [p.name for p in presets()]
    close = difflib.get_close_matches(Path(name).stem, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"{where}'{name}' is neither a file ({name} or {name}.yaml in {base_dir}) nor a "
        f"preset{hint}; presets: {', '.join(names)}"
    )


def find_config(name: str | Path) -> Path:
    """A config path as given, else ``name.yaml`` in the working directory, else the preset
    of that name."""
    path = Path(name)
    return path if path.is_file() else _find_preset(str(name), Path.cwd(), "config ")


def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OmegaConfBaseException, ValueError, yaml.YAMLError) as exc:
        reason = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML: {reason}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config must be a mapping at the top level")
    return cfg


def _default_path(name: str, including: Path) -> Path:
    """The file a ``defaults`` entry of the config ``including`` names: a file beside it, else a
    preset. A name that finds the config itself (``grpo.yaml`` copied from the preset and
    still starting ``defaults: [grpo]``) means the shipped preset."""
    found = _find_preset(name, including.parent, "defaults: ")
    if found.resolve() == including and including.parent != PRESET_DIR.resolve():
        return _find_preset(name, PRESET_DIR, "defaults: ")
    return found


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise ConfigError(f"defaults: presets include each other in a cycle: {chain}")
    cfg = _read_yaml(path)
    defaults = cfg.pop("defaults", [])
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, (list, ListConfig)):
        raise ConfigError(f"{path}: defaults must be a list of preset names")
    parts = [_compose(_default_path(str(name), path), (*seen, path)) for name in defaults]
    merged = parts[0] if parts else cfg
    for part in [*parts[1:], cfg] if parts else []:
        merged = merge(merged, part)
    return merged


def _component_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, DictConfig) and "name" in value:
        return str(value["name"])
    return None


def merge(base: DictConfig, override: DictConfig) -> DictConfig:
    """OmegaConf merge, except that a component whose ``name`` changes is replaced whole:
    the parameters of the old component do not leak into the new one. The keys beside
    ``name`` that belong to the engine (``kl.coef``, see ``Kind.engine_keys``) stay."""
    base = base.copy()
    for kind in KINDS:
        if kind in override and kind in base:
            new, name = override[kind], _component_name(override[kind])
            if new is None or OmegaConf.is_list(new):
                base[kind] = None
            elif name is not None and name != _component_name(base[kind]):
                old = base[kind]
                kept = {k: old[k] for k in KINDS[kind].reserved if isinstance(old, DictConfig) and k in old}
                base[kind] = OmegaConf.create(kept) if kept else None
                if isinstance(new, str) and kept:
                    override = override.copy()
                    override[kind] = {"name": new}
    return OmegaConf.merge(base, override)


def load_config(config: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Presets (``defaults``) → the file → ``key=value`` overrides, merged in that order.

    ``config`` is a path or a preset name (``find_config``)."""
    cfg = _compose(find_config(config))
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
    if overrides:
        try:
            cfg = merge(cfg, OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"overrides: {exc}") from None
    return cfg


def component_specs(cfg: DictConfig, registry: Registry) -> list[tuple[str, str, Any]]:
    """Every component the config names: (kind, config path, spec).

    A kind's key holds one spec, or a list of specs for ``multiple`` kinds (rewards).
    """
    specs = []
    for kind in registry.kinds():
        if kind not in cfg or cfg[kind] is None:
            continue
        value = cfg[kind]
        multiple = KINDS[kind].multiple if kind in KINDS else False
        if multiple and isinstance(value, ListConfig):
            specs.extend((kind, f"{kind}[{i}]", item) for i, item in enumerate(value))
        else:
            specs.append((kind, kind, value))
    return specs


def disabled_plugins(cfg: DictConfig) -> list[str]:
    """``plugins.disable`` of a config, as a list of plugin names."""
    value = OmegaConf.select(cfg, "plugins.disable", default=None)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def validate_config(cfg: DictConfig, registry: Registry | None = None) -> list[tuple[str, str, Any]]:
    """Check every component name and bind its parameters, building nothing.

    Raises ``ConfigError`` with one line per problem (config path, component, accepted
    keys); returns the component specs when all is well.
    """
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"config interpolation failed: {exc}") from None
    from rlloom.settings import load_settings

    problems = []
    try:
        load_settings(cfg)
    except ConfigError as exc:
        problems.append(str(exc))
    registry = registry or get_registry(disabled_plugins(cfg))
    specs = component_specs(cfg, registry)
    for kind, path, spec in specs:
        try:
            registry.bind(kind, spec, path)
        except ConfigError as exc:
            problems.append(str(exc))
    if not problems and "reward" in cfg:
        from rlloom.pipeline import reward_specs

        try:
            names = [r.name for r in reward_specs(cfg)]
            chosen = OmegaConf.select(cfg, "trainer.eval_reward")
            if chosen is not None and chosen not in names:
                problems.append(
                    f"trainer.eval_reward: '{chosen}' is not one of the configured rewards ({', '.join(names) or 'none'})"
                )
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return specs
