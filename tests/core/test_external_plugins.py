"""Third-party plugins through the entry-point group: installed out of tree, and broken ones."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "rlloom-median-baseline"


def _rlloom(args, extra_path, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "rlloom.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def installed_contrib(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(CONTRIB)],
        check=True, capture_output=True,
    )
    return target


def test_out_of_tree_plugin_is_listed(installed_contrib):
    proc = _rlloom(["list", "advantage", "--json"], installed_contrib)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert rows["median_baseline"]["plugin"] == "median_baseline"
    assert rows["median_baseline"]["summary"].startswith("Group-median baseline")
    assert "grpo" in rows  # builtins still there


def test_config_uses_plugin_by_name(installed_contrib, tmp_path):
    config = tmp_path / "median.yaml"
    config.write_text("defaults: [grpo]\nadvantage: {name: median_baseline, scale: 2.0}\n")
    assert _rlloom(["validate", str(config)], installed_contrib).returncode == 0
    bad = _rlloom(["validate", str(config), "advantage.scael=1"], installed_contrib)
    assert bad.returncode == 2 and "did you mean 'scale'" in bad.stderr


def test_contrib_advantage_values_by_hand(installed_contrib):
    sys.path.insert(0, str(installed_contrib))
    try:
        import torch
        from rlloom_median_baseline import MedianBaseline

        from rlloom.testing import check_component, rollout_batch

        # group 0 rewards [0, 1, 10] -> median 1 -> [-1, 0, 9]; group 1 [2, 4] -> median 3 -> [-1, 1]
        rewards = torch.tensor([0.0, 1.0, 10.0, 2.0, 4.0])
        mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 1], [1, 0]])
        batch = rollout_batch(mask, group_ids=[0, 0, 0, 1, 1], rewards=rewards)
        out = MedianBaseline()(batch)
        expected = torch.tensor([[-1.0, -1.0], [0.0, 0.0], [9.0, 9.0], [-1.0, -1.0], [1.0, 1.0]])
        assert torch.equal(out.advantages, expected * mask)
        # adv/mean over the 8 real tokens, like every builtin: (-2 + 0 + 18 - 2 + 1) / 8
        assert out.metrics["adv/mean"].item() == pytest.approx(15 / 8)
        assert check_component("advantage", MedianBaseline()).requires == {"rewards", "group_ids"}
    finally:
        sys.path.remove(str(installed_contrib))


def test_broken_plugin_is_named_and_can_be_disabled(tmp_path):
    (tmp_path / "broken_rl_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    dist = tmp_path / "broken_rl_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-rl-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlloom.plugins]\nbroken = broken_rl_plugin\n")
    proc = _rlloom(["list"], tmp_path)
    assert proc.returncode == 2
    assert "plugin 'broken' (package broken-rl-plugin) failed to import" in proc.stderr
    assert "plugins.disable: [broken]" in proc.stderr and "Traceback" not in proc.stderr
    ok = _rlloom(["list", "advantage", "--json"], tmp_path, {"RLLOOM_DISABLE_PLUGINS": "broken"})
    assert ok.returncode == 0 and "grpo" in ok.stdout
    config = tmp_path / "c.yaml"
    config.write_text("defaults: [grpo]\nplugins: {disable: [broken]}\n")
    assert _rlloom(["validate", str(config)], tmp_path).returncode == 0
