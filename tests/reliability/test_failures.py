"""A failed run says why in one line, on stderr and as its MLflow ``error`` tag; ``--traceback``
(or ``RLLOOM_DEBUG=1``) adds the full traceback; a bug in a plugin is reported as the plugin's,
with the original exception chained, never as a config mistake."""
import sys

import pytest
from faults import GRPO, error_lines, runs, tiny_run

from rlloom import hookimpl
from rlloom.cli import main
from rlloom.config import load_config
from rlloom.engine import Trainer
from rlloom.errors import ComponentError, ConfigError
from rlloom.registry import make_plugin_manager

FAILING_REWARD = "def reward(prompts, completions, **columns):\n    return [1 / 0 for _ in completions]\n"


@pytest.fixture
def failing_reward(tmp_path, monkeypatch):
    """Overrides for a tiny run whose reward function raises ZeroDivisionError."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "failing_reward.py").write_text(FAILING_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "failing_reward", raising=False)  # this test's file, not a cached one
    return tiny_run(tmp_path, tmp_path / "run", "reward={name: python, function: 'failing_reward:reward'}")


def test_a_failed_run_is_tagged_with_the_line_it_prints(failing_reward, tmp_path, capsys):
    code = main(["train", GRPO, *failing_reward])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert "reward 'python' raised ZeroDivisionError: division by zero" in line
    [run] = runs(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == line.removeprefix("rlloom: error: ")


@pytest.mark.parametrize("ask", ["flag", "env"])
def test_traceback_on_request(ask, failing_reward, capsys, monkeypatch):
    if ask == "env":
        monkeypatch.setenv("RLLOOM_DEBUG", "1")
    code = main(["train", *(["--traceback"] if ask == "flag" else []), GRPO, *failing_reward])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert "ZeroDivisionError: division by zero" in err  # the original exception, chained
    assert error_lines(err)[-1].startswith("rlloom: error: reward 'python' raised ZeroDivisionError")


class _BuggyAdvantage:
    """An advantage estimator with a bug: it raises ValueError when called."""

    requires = {"rewards", "group_ids"}

    def __call__(self, batch):
        raise ValueError("too many values to unpack (expected 2)")


def _broken_factory(scale: float = 1.0):
    return {}["scale"]  # a bug while building: KeyError


class _BuggyPlugin:
    @hookimpl
    def rlloom_advantage(self):
        return {"buggy": _BuggyAdvantage, "broken": _broken_factory}


def _trainer(tmp_path, advantage):
    pm = make_plugin_manager()
    pm.register(_BuggyPlugin(), name="my_plugin")
    cfg = load_config(GRPO, tiny_run(tmp_path, tmp_path / "run", f"advantage={advantage}"))
    return Trainer(cfg, plugin_manager=pm)


def test_a_plugin_bug_in_the_advantage_call_is_the_plugins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ComponentError) as err:
        _trainer(tmp_path, "buggy").train()
    assert not isinstance(err.value, ConfigError)
    assert str(err.value) == ("advantage 'buggy' from plugin 'my_plugin' raised ValueError: too many values to "
                              "unpack (expected 2) (a bug in the plugin, not in the config)")
    assert isinstance(err.value.__cause__, ValueError)
    [run] = runs(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags["error"] == str(err.value)


def test_a_plugin_bug_in_a_factory_is_the_plugins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ComponentError) as err:
        _trainer(tmp_path, "broken")
    assert str(err.value).startswith("advantage: advantage 'broken' from plugin 'my_plugin' raised KeyError: 'scale'")
    assert isinstance(err.value.__cause__, KeyError)


def test_a_refused_parameter_is_a_config_error_at_its_path(tiny, capsys):
    code = main(["train", GRPO, *tiny, "advantage.eps=-1", "trainer.eval_every=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert error_lines(err) == ["rlloom: error: advantage: advantage 'grpo': eps must be >= 0, got -1"]
