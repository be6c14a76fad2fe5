"""A SIGTERM whose exception Python drops (it arrived in a garbage-collection callback) still
stops the run at the end of the step."""
import contextlib
import signal

import mlflow
import pytest

from rlloom import hookimpl, stopping
from rlloom.config import PRESET_DIR, load_config
from rlloom.engine import Trainer
from rlloom.registry import make_plugin_manager


def _signal_during_a_gc_callback(signum):
    """What happens when the signal arrives while a weakref callback or ``__del__`` runs: the
    handler raises and Python drops the exception ("Exception ignored in ..."). Dropped here
    by hand: a real unraisable KeyboardInterrupt would stop pytest itself."""
    with contextlib.suppress(KeyboardInterrupt):
        stopping._handle(signum, None)


@pytest.mark.parametrize("signum, kind", [(signal.SIGTERM, stopping.Terminated), (signal.SIGHUP, stopping.HungUp)])
def test_a_dropped_signal_is_raised_again(monkeypatch, signum, kind):
    monkeypatch.setattr(stopping, "_received", [])
    stopping.raise_if_stopping()  # nothing received: nothing raised
    _signal_during_a_gc_callback(signum)
    with pytest.raises(kind):
        stopping.raise_if_stopping()


def test_the_training_loop_stops_after_the_step_the_signal_arrived_in(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(stopping, "_received", [])

    class DropsASignalInStep2:
        @hookimpl
        def rlloom_after_step(self, step, metrics):
            if step == 2:
                _signal_during_a_gc_callback(signal.SIGTERM)

    pm = make_plugin_manager()  # this run's own: the plugin must not outlive the test
    pm.register(DropsASignalInStep2())
    cfg = load_config(PRESET_DIR / "grpo.yaml", [*tiny, "trainer.max_steps=5", "trainer.checkpoint_every=1"])
    with pytest.raises(stopping.Terminated):
        Trainer(cfg, plugin_manager=pm).train()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "KILLED"
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step_0000001", "step_0000002"]
