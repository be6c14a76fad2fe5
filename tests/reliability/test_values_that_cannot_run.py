"""Values that pass a type check but cannot run are refused by ``rlloom validate``, one line
each, before anything is built; ``rlloom train`` refuses them the same way."""
import pytest

from rlloom.cli import main


CASES = [
    ("trainer.lr=-1", "trainer.lr: must be > 0, got -1.0"),
    ("trainer.prompts_per_step=0", "trainer.prompts_per_step: must be >= 1, got 0"),
    ("trainer.micro_batch_size=0", "trainer.micro_batch_size: must be >= 1, got 0"),
    ("kl.clamp=abc", "kl.clamp: kl 'k3' takes clamp as float or None, got 'abc' (str)"),
    ("trainer.max_steps=-5", "trainer.max_steps: must be >= 1, got -5"),
    ("trainer.max_steps=0", "trainer.max_steps: must be >= 1, got 0"),
    ("trainer.epochs=0", "trainer.epochs: must be >= 1, got 0"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm: must be > 0, got -1.0"),
]


@pytest.fixture
def preset(tmp_path, monkeypatch):
    """The grpo preset's path, run from an empty directory (so anything built would show)."""
    from rlloom.config import PRESET_DIR

    monkeypatch.chdir(tmp_path)
    return str(PRESET_DIR / "grpo.yaml")


@pytest.mark.parametrize("override,line", CASES, ids=[c[0] for c in CASES])
def test_validate_refuses_in_one_line(preset, tmp_path, capsys, override, line):
    code = main(["validate", preset, override])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"rlloom: error: {line}\n"
    assert list(tmp_path.iterdir()) == []  # nothing built, nothing written


@pytest.mark.parametrize("override,line", CASES, ids=[c[0] for c in CASES])
def test_train_refuses_before_building(preset, tmp_path, capsys, override, line):
    code = main(["train", preset, override, f"output_dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert line in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no warm start, no run, no tracking store


def test_every_bad_value_is_reported_at_once(preset, capsys):
    assert main(["validate", preset, "trainer.max_steps=0", "trainer.lr=0", "kl.clamp=x"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "rlloom: error: trainer.max_steps: must be >= 1, got 0",
        "trainer.lr: must be > 0, got 0.0",
        "kl.clamp: kl 'k3' takes clamp as float or None, got 'x' (str)",
    ]


def test_a_well_typed_parameter_still_validates(preset, capsys):
    assert main(["validate", preset, "kl.clamp=3", "trainer.eval_every=0", "trainer.checkpoint_every=0"]) == 0
    assert "ok" in capsys.readouterr().out
