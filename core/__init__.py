"""rlloom: a plugin framework for reinforcement-learning post-training of language models."""
from rlloom.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["hookimpl", "__version__"]
