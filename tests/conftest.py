"""Tiny, fast overrides that turn any preset into a seconds-long CPU run."""
import pytest

TINY = [
    "warm_start.config=null",
    "model.embedded.hidden_size=32",
    "model.embedded.num_layers=1",
    "model.embedded.num_heads=2",
    "model.embedded.intermediate_size=64",
    "task.num_train=64",
    "task.num_test=16",
    "task.max_value=9",
    "trainer.max_steps=2",
    "trainer.prompts_per_step=4",
    "trainer.micro_batch_size=8",
    "trainer.batch_size=8",
    "trainer.eval_every=2",
    "trainer.eval_size=8",
]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Overrides for a tiny run writing into ``tmp_path`` (MLflow store included)."""
    monkeypatch.chdir(tmp_path)
    return [*TINY, f"output_dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
