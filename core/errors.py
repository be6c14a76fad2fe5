"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

ERROR_TAG_LEN = 500  # characters of the one-line reason kept in an MLflow ``error`` tag


class RlloomError(Exception):
    """Base of every error reported as one line: config, data, plugin, reward function, checkpoint.

    ``exit_code`` is the CLI's exit status for it: 2 for bad input, 1 for a failure that is not
    the input's fault.
    """

    exit_code = 2


class ConfigError(RlloomError):
    """A config names an unknown component, a parameter a factory does not take, or bad values."""


class ParameterError(ConfigError, ValueError):
    """A component factory refuses a parameter value (``clip must be > 0``).

    Plugins raise it from their factories and parameter checks; the registry reports it as a
    config error at the component's config path. Any other exception a factory raises is a
    bug in the plugin (``ComponentError``).
    """


class RegistryError(RlloomError):
    """Two plugins register one name, or a name is unknown."""


class PluginLoadError(RlloomError):
    """A plugin failed to import, or implements a hook under a wrong name (or without @hookimpl)."""


class ComponentError(RlloomError):
    """A component raised an unexpected exception while being built or called: a bug in its
    plugin, not a config mistake. Names the component and its plugin; the original exception
    is chained (``--traceback`` shows it)."""

    exit_code = 1


class DataError(RlloomError):
    """A dataset is empty, lacks a field, or has a malformed row."""


class RewardError(RlloomError):
    """A reward function raised or returned the wrong number or kind of values."""


class TrainingError(RlloomError):
    """Training cannot go on (non-finite loss or gradient, a bad checkpoint)."""


class OutputError(RlloomError):
    """A run's files cannot be written: ``output_dir`` is read-only, a file, or its disk is full."""

    exit_code = 1


@contextmanager
def component_call(what: str) -> Iterator[None]:
    """Run a plugin's code; an exception that is not an ``RlloomError`` becomes a
    ``ComponentError`` saying ``what`` raised it (e.g. "advantage 'grpo' from plugin
    'rlloom.plugins.grpo'"), with the original chained."""
    try:
        yield
    except RlloomError:
        raise
    except Exception as exc:
        raise ComponentError(f"{what} raised {type(exc).__name__}: {exc} (a bug in the plugin, not in the config)") from exc


def one_line(exc: BaseException) -> str:
    """The one-line reason a run failed, as the CLI prints it and the MLflow ``error`` tag
    records it: an ``RlloomError``'s message (its lines joined by "; "), else the first line
    of the exception's type and message."""
    if isinstance(exc, RlloomError):
        return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


class TrackingError(RlloomError):
    """The tracking store cannot be reached, or the run cannot be started in it."""
