"""Third-party plugins through the entry-point group: installed out of tree, and broken ones."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib" / "rlloom-example"


def _rlloom(args, extra_path, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(extra_path), os.environ.get("PYTHONPATH", "")]))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "rlloom.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def installed_contrib(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    # built from a copy: an in-tree build would leave rlloom_example.egg-info (an entry point)
    # beside the sources, which the project's test run has on its path
    source = tmp_path_factory.mktemp("src") / CONTRIB.name
    shutil.copytree(CONTRIB, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True,
    )
    return target


def test_out_of_tree_plugin_is_listed_and_shown(installed_contrib):
    proc = _rlloom(["list", "--json"], installed_contrib)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(proc.stdout)}
    for key in [("advantage", "median_baseline"), ("reward", "answer_distance"), ("kl", "abs_log_ratio")]:
        assert (rows[key]["plugin"], rows[key]["package"], rows[key]["version"]) == ("example", "rlloom-example", "0.1.0")
    assert rows[("advantage", "median_baseline")]["summary"].startswith("Group-median baseline")
    assert ("advantage", "grpo") in rows  # builtins still there
    shown = _rlloom(["show", "reward", "answer_distance", "--json"], installed_contrib)
    assert shown.returncode == 0, shown.stderr
    params = {p["name"]: p for p in json.loads(shown.stdout)["parameters"]}
    assert (params["scale"]["type"], params["scale"]["default"]) == ("float", 10.0)
    assert params["scale"]["meaning"] == "scale: the distance at which the reward reaches 0."


def test_config_uses_plugin_by_name(installed_contrib, tmp_path):
    config = tmp_path / "median.yaml"
    config.write_text("defaults: [grpo]\nadvantage: {name: median_baseline, scale: 2.0}\n")
    assert _rlloom(["validate", str(config)], installed_contrib).returncode == 0
    bad = _rlloom(["validate", str(config), "advantage.scael=1"], installed_contrib)
    assert bad.returncode == 2 and "did you mean 'scale'" in bad.stderr


def test_run_tags_the_packages_of_the_plugins_it_uses(installed_contrib, tmp_path):
    from rlloom.testing import tiny_run

    db = tmp_path / "mlflow.db"
    plain = _rlloom(["train", "grpo", *tiny_run(tmp_path), "tracking.run_name=plain"], installed_contrib)
    assert plain.returncode == 0, plain.stderr[-2000:]
    used = _rlloom(["train", "grpo", *tiny_run(tmp_path), "tracking.run_name=median", "output_dir=" + str(tmp_path / "m"),
                    "advantage=median_baseline"], installed_contrib)
    assert used.returncode == 0, used.stderr[-2000:]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    runs = {r.info.run_name: r.data.tags for r in client.search_runs([client.get_experiment_by_name("rlloom").experiment_id])}
    assert runs["median"]["plugin.rlloom-example"] == "0.1.0" and runs["median"]["plugin.rlloom"] == "0.1.0"
    assert "plugin.rlloom-example" not in runs["plain"]  # installed, but no component of it used


def _fake_dist(site, module, source, dist, entry_point):
    """An installed distribution ``dist`` in ``site`` whose entry point loads ``module``."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[rlloom.plugins]\n{entry_point} = {module}\n")


def test_broken_plugin_is_listed_with_its_error_and_stops_only_a_run_that_needs_it(tmp_path):
    _fake_dist(tmp_path, "broken_rl_plugin", "raise ImportError('needs a library that is not installed')\n",
               "broken-rl-plugin", "broken")
    error = ("plugin 'broken' (package broken-rl-plugin) failed to import from entry point 'broken_rl_plugin': "
             "ImportError: needs a library that is not installed. Disable it with `plugins.disable: [broken]` "
             "in the config or RLLOOM_DISABLE_PLUGINS=broken in the environment.")
    listing = _rlloom(["list", "kl"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "k3" in listing.stdout and " ".join(listing.stdout.split()).endswith(f"not loaded: {error}")
    rows = json.loads(_rlloom(["list", "--json"], tmp_path).stdout)
    assert {"kind": None, "name": None, "plugin": "broken", "package": "broken-rl-plugin", "version": "0.1",
            "summary": "", "error": error} in rows
    ok = _rlloom(["validate", "grpo"], tmp_path)
    assert ok.returncode == 0 and ok.stderr == f"rlloom: warning: not loaded: {error}\n"
    needs_it = _rlloom(["validate", "grpo", "advantage=median_of_means"], tmp_path)
    assert needs_it.returncode == 2 and "Traceback" not in needs_it.stderr
    [_, line] = needs_it.stderr.strip().splitlines()  # the warning, then the one-line error
    assert line.startswith("rlloom: error: advantage: unknown advantage 'median_of_means'; known: ")
    assert line.endswith(f"; not loaded: {error}")
    quiet = _rlloom(["validate", "grpo"], tmp_path, {"RLLOOM_DISABLE_PLUGINS": "broken"})
    assert quiet.returncode == 0 and quiet.stderr == ""
    config = tmp_path / "c.yaml"
    config.write_text("defaults: [grpo]\nplugins: {disable: [broken]}\n")
    assert _rlloom(["validate", str(config)], tmp_path).stderr == ""


def test_two_plugins_registering_one_name_block_only_that_name(tmp_path):
    source = "from rlloom import hookimpl\nfrom rlloom.plugins.rloo import RLOOAdvantage\n\n" \
             "@hookimpl\ndef rlloom_advantage():\n    return {'{name}': RLOOAdvantage}\n"
    _fake_dist(tmp_path, "first_rl_plugin", source.replace("{name}", "loo"), "first-rl-plugin", "first")
    _fake_dist(tmp_path, "second_rl_plugin", source.replace("{name}", "loo"), "second-rl-plugin", "second")
    listing = _rlloom(["list", "advantage", "--json"], tmp_path)
    assert listing.returncode == 0, listing.stderr
    [row] = [r for r in json.loads(listing.stdout) if r["name"] == "loo"]
    assert {row["plugin"], row["error"]} == {
        "first, second",
        "advantage 'loo' is registered twice: by plugin 'first' and by plugin 'second'. "
        "Rename one, or disable one with `plugins.disable`.",
    }
    assert _rlloom(["validate", "grpo", "advantage=rloo"], tmp_path).returncode == 0
    clash = _rlloom(["validate", "grpo", "advantage=loo"], tmp_path)
    assert clash.returncode == 2
    assert clash.stderr == f"rlloom: error: advantage: {row['error']}\n"
    one = _rlloom(["validate", "grpo", "advantage=loo"], tmp_path, {"RLLOOM_DISABLE_PLUGINS": "second"})
    assert one.returncode == 0, one.stderr
