"""An example rlloom plugin package, to copy: one component of each common kind.

Each hook returns ``{name: factory}`` for one kind; the package's ``pyproject.toml`` names this
module in the entry-point group ``rlloom.plugins``, so after ``pip install`` a config uses the
components by name (``advantage: median_baseline``, ``kl: {name: abs_log_ratio, coef: 0.02}``,
``reward: [answer_equivalence, {name: answer_distance, weight: 0.5}]``).
"""
from rlloom import hookimpl

from rlloom_example.advantage import MedianBaseline
from rlloom_example.kl import AbsLogRatio
from rlloom_example.reward import AnswerDistance

__all__ = ["AbsLogRatio", "AnswerDistance", "MedianBaseline"]


@hookimpl
def rlloom_advantage():
    return {"median_baseline": MedianBaseline}


@hookimpl
def rlloom_reward():
    return {"answer_distance": AnswerDistance}


@hookimpl
def rlloom_kl():
    return {"abs_log_ratio": AbsLogRatio}
