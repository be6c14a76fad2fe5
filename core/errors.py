"""Errors that reach the user as one clear message (the CLI prints them without a traceback)."""


class RlloomError(Exception):
    """Base of every error caused by bad input: config, data, plugin, reward function, checkpoint."""


class ConfigError(RlloomError):
    """A config names an unknown component, a parameter a factory does not take, or bad values."""


class RegistryError(RlloomError):
    """Two plugins register one name, or a name is unknown."""


class PluginLoadError(RlloomError):
    """A plugin failed to import, or implements a hook under a wrong name (or without @hookimpl)."""


class DataError(RlloomError):
    """A dataset is empty, lacks a field, or has a malformed row."""


class RewardError(RlloomError):
    """A reward function raised or returned the wrong number or kind of values."""


class TrainingError(RlloomError):
    """Training cannot go on (non-finite loss or gradient, a bad checkpoint)."""
