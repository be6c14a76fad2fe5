"""A component described for ``rlloom show``: its parameters with their types, defaults and
meanings, the plugin and package that provide it, its call signature and its docstring.

Types and defaults come from the factory's signature (a class's ``__init__``); a parameter's
meaning is the sentence of the factory's docstring that starts with the parameter's name in
double backticks (``scale``: ...), else the first sentence that mentions it. The keys beside
``name`` that belong to the engine (a reward's ``weight``, the KL's ``coef``) are described
the same way from their kind's dataclass (``Kind.engine_keys``).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

from rlloom.kinds import KINDS, nested_components
from rlloom.registry import Entry, Registry

REQUIRED = inspect.Parameter.empty
"""The default of a parameter a config must give."""

_ABBREVIATIONS = ("al", "e.g", "i.e", "Eq", "Dr", "cf", "vs", "Sec", "Fig")
# a sentence ends at . ! ? before a space and a capital, a backtick or a parenthesis; a clause at
# "; " before a ``name``
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z(`])|(?<=;)\s+(?=``)")


@dataclass(frozen=True)
class Parameter:
    """One config key of a component: its type, default (``REQUIRED``: none) and meaning;
    ``engine``: a key the engine reads, not the factory."""

    name: str
    type: str
    default: Any
    meaning: str
    engine: bool = False


@dataclass(frozen=True)
class Description:
    """Everything ``rlloom show`` prints about one component."""

    kind: str
    name: str
    plugin: str
    package: str | None
    version: str | None
    call: str
    parameters: list[Parameter]
    docstring: str

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for p in data["parameters"]:
            p["required"] = p["default"] is REQUIRED
            p["default"] = None if p["required"] else p["default"]
        return data


def describe(registry: Registry, kind: str, name: str) -> Description:
    """The description of ``kind`` ``name`` (``RegistryError`` for an unknown name)."""
    entry = registry.get(kind, name)
    plugin = registry.plugin(entry.plugin)
    spec = KINDS.get(kind)
    call = _plain(_first_line(spec.interface)) if spec else ""
    engine = [_engine_key(spec.engine_keys, f) for f in dataclasses.fields(spec.engine_keys)] if spec and spec.engine_keys else []
    return Description(
        kind, name, entry.plugin, plugin.package, plugin.version, call,
        factory_parameters(entry) + engine, inspect.getdoc(entry.factory) or "",
    )


def factory_parameters(entry: Entry) -> list[Parameter]:
    """The keyword parameters of ``entry``'s factory, in signature order; a nested component's
    type is its kind (``a sampler spec``)."""
    doc = inspect.getdoc(entry.factory) or ""
    nested = nested_components(entry.factory)
    found = []
    for p in inspect.signature(entry.factory).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            kind = f"a {nested[p.name]} spec" if p.name in nested else _annotation(p.annotation)
            found.append(Parameter(p.name, kind, p.default, meaning(doc, p.name)))
    return found


def _engine_key(schema: type, field: dataclasses.Field) -> Parameter:
    return Parameter(field.name, str(field.type), field.default, meaning(inspect.getdoc(schema) or "", field.name), True)


def meaning(doc: str, name: str) -> str:
    """The sentence of ``doc`` that starts with ````name````, else the first that mentions it
    (``""`` when none does), on one line without reST backticks."""
    mention = f"``{name}``"
    sentences = [s for paragraph in doc.split("\n\n") for s in _sentences(" ".join(paragraph.split()))]
    mentioning = [s for s in sentences if mention in s or f"``{name}:" in s or f"``{name}=" in s]
    leading = [s for s in mentioning if re.match(rf"((Parameters|Args):\s*)?``{name}``", s)]
    chosen = (leading or mentioning or [""])[0]
    return _plain(re.sub(r"^(Parameters|Args):\s*", "", chosen))


def _sentences(text: str) -> list[str]:
    """``text`` split into sentences (and ``; ``name``…`` clauses), not after an abbreviation."""
    parts, start = [], 0
    for match in _BOUNDARY.finditer(text):
        before = text[start:match.start()].rstrip(".!?;")
        if text[match.start() - 1] == "." and before.split()[-1:] and before.split()[-1].endswith(_ABBREVIATIONS):
            continue
        parts.append(text[start:match.start()])
        start = match.end()
    parts.append(text[start:])
    return [p.strip().rstrip(";") for p in parts if p.strip()]


def _plain(text: str) -> str:
    return text.replace("``", "")


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def _annotation(annotation: Any) -> str:
    if annotation is inspect.Parameter.empty:
        return ""
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
