"""The hook specifications: each documented, each in the ``rlloom_`` namespace."""
import inspect

from rlloom import hookspecs

SPEC_MARKER = f"{hookspecs.PROJECT}_spec"  # the attribute @hookspec sets: "rlloom_spec"


def _hookspecs():
    return {
        name: fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, SPEC_MARKER)
    }


def test_hookspecs_are_found():
    specs = _hookspecs()
    assert "rlloom_advantage" in specs and "rlloom_run_end" in specs


def test_every_hookspec_has_a_docstring():
    undocumented = sorted(name for name, fn in _hookspecs().items() if not inspect.getdoc(fn))
    assert not undocumented, f"hookspecs without a docstring: {', '.join(undocumented)}"


def test_every_hookspec_name_starts_with_rlloom():
    misnamed = sorted(name for name in _hookspecs() if not name.startswith("rlloom_"))
    assert not misnamed, f"hookspecs not named rlloom_*: {', '.join(misnamed)}"
