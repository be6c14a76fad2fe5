"""Config loading (merge order) and validation errors."""
from pathlib import Path

import pytest

from rlloom.config import PRESET_DIR, load_config, validate_config
from rlloom.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_merge_order_preset_then_file_then_overrides(tmp_path):
    _write(tmp_path / "base.yaml", "seed: 1\ntrainer: {lr: 0.1, max_steps: 5}\nadvantage: grpo\n")
    user = _write(tmp_path / "user.yaml", "defaults: [base]\nseed: 2\ntrainer: {lr: 0.2}\n")
    cfg = load_config(user, ["trainer.lr=0.3"])
    assert cfg.seed == 2  # file beats preset
    assert cfg.trainer.lr == 0.3  # override beats file
    assert cfg.trainer.max_steps == 5  # preset value survives where nobody overrides
    assert cfg.advantage == "grpo"
    assert "defaults" not in cfg


def test_defaults_resolve_to_project_presets(tmp_path):
    user = _write(tmp_path / "user.yaml", "defaults: [grpo]\ntrainer: {max_steps: 3}\n")
    cfg = load_config(user)
    assert cfg.trainer.max_steps == 3
    assert cfg.advantage == load_config(PRESET_DIR / "grpo.yaml").advantage


def test_missing_preset_and_cycle_are_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"^defaults: 'nope' is neither a file \(nope or nope\.yaml in .*\) nor a preset; presets: .*grpo"):
        load_config(_write(tmp_path / "a.yaml", "defaults: [nope]\n"))
    _write(tmp_path / "x.yaml", "defaults: [y]\n")
    _write(tmp_path / "y.yaml", "defaults: [x]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "x.yaml")


def test_a_config_named_like_the_preset_it_extends_extends_the_preset(tmp_path):
    # ./grpo.yaml starting `defaults: [grpo]` means the shipped grpo, not itself
    mine = load_config(_write(tmp_path / "grpo.yaml", "defaults: [grpo]\ntrainer: {max_steps: 7}\n"))
    shipped = load_config(PRESET_DIR / "grpo.yaml")
    assert mine.trainer.max_steps == 7 and shipped.trainer.max_steps != 7
    assert mine.advantage == shipped.advantage and mine.algorithm == shipped.algorithm


def test_bad_override_and_bad_yaml(tmp_path):
    good = _write(tmp_path / "g.yaml", "seed: 0\n")
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(good, ["seed"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path / "b.yaml", "a: [1, 2\n"))


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESET_DIR.glob("*.yaml")))
def test_every_preset_validates(preset):
    validate_config(load_config(PRESET_DIR / preset))


def test_misspelled_component_name_is_one_line_with_suggestion():
    cfg = load_config(PRESET_DIR / "grpo.yaml", ["advantage.name=grop"])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == (
        "advantage: unknown advantage 'grop' (did you mean 'grpo'?); known: "
        + str(err.value).split("known: ")[1]
    )
    assert "\n" not in str(err.value)


def test_misspelled_parameter_names_path_and_accepted_keys():
    cfg = load_config(PRESET_DIR / "grpo.yaml", ["policy_loss.eps_hgih=0.28"])
    with pytest.raises(ConfigError, match=r"^policy_loss\.eps_hgih: .*accepted keys: eps, eps_low, eps_high, dual_clip$"):
        validate_config(cfg)


def test_misspelled_engine_key_and_wrong_type():
    with pytest.raises(ConfigError, match=r"trainer\.max_stpes.*max_steps"):
        validate_config(load_config(PRESET_DIR / "grpo.yaml", ["trainer.max_stpes=3"]))
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        validate_config(load_config(PRESET_DIR / "grpo.yaml", ["trainer.max_steps=many"]))


def test_reward_list_entries_are_validated_with_index():
    cfg = load_config(PRESET_DIR / "grpo.yaml", ["reward=[answer_equivalence, {name: format, patern: x}]"])
    with pytest.raises(ConfigError, match=r"^reward\[1\]\.patern: .*did you mean 'pattern'"):
        validate_config(cfg)
