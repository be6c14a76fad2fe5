"""``rlloom compare``: variant expansion, naming, value parsing, the summary, and a real
compare against a real ``mlflow server`` on loopback."""
import io
import json
import re
import urllib.parse
from pathlib import Path

import pytest
from mlflow import MlflowClient
from rich.console import Console

from rlloom import testing
from rlloom.cli import main
from rlloom.compare import (
    THROUGHPUT,
    Child,
    Comparison,
    Result,
    error_message,
    expand,
    format_value,
    markdown_table,
    parse_value,
    parse_vary,
    sanitise,
    split_values,
    summarise,
    variant_key,
    winners,
)
from rlloom.config import PRESET_DIR, load_config
from rlloom.errors import ConfigError
from rlloom.settings import load_settings

GRPO = str(PRESET_DIR / "grpo.yaml")
from conftest import TINY as TINY_RUN  # noqa: E402  (the tiny-run overrides shared by engine tests)

TINY = [*TINY_RUN, "sampler.num_generations=2", "sampler.max_new_tokens=4"]


# ---------------------------------------------------------------------- values and names
def test_values_read_like_yaml_scalars():
    assert parse_value("0.28") == 0.28 and isinstance(parse_value("0.28"), float)
    assert parse_value("1e-3") == 0.001  # OmegaConf reads exponents without a dot as floats
    assert parse_value("rloo") == "rloo"
    assert parse_value("null") is None
    assert parse_value("true") is True
    assert parse_value("-1") == -1
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("{name: grpo, scale: batch}") == {"name": "grpo", "scale": "batch"}
    assert [format_value(parse_value(t)) for t in ("null", "true", "0.28", "rloo", "1e-3")] == [
        "null", "true", "0.28", "rloo", "0.001"
    ]


def test_values_split_on_commas_outside_brackets_and_quotes():
    assert split_values("rloo, grpo") == ["rloo", "grpo"]
    assert split_values("[1,2],{a: 1, b: 2},'x,y',3") == ["[1,2]", "{a: 1, b: 2}", "'x,y'", "3"]
    assert parse_vary("policy_loss.eps_high=0.2,0.28") == ("policy_loss.eps_high", ["0.2", "0.28"])


@pytest.mark.parametrize("spec, needle", [
    ("advantage", "expected KEY=V1,V2"),
    ("=1,2", "expected KEY=V1,V2"),
    ("a=", "expected KEY=V1,V2"),
    ("a=1,,2", "empty value"),
    ("a=0.5,0.50", "given twice"),  # the same value, spelled twice
])
def test_bad_vary_specs_are_config_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_vary(spec)


def test_cross_product_names_and_tags():
    children = expand(["advantage=rloo,grpo", "policy_loss.eps_high=0.28,null"])
    assert [c.name for c in children] == [
        "advantage=rloo,policy_loss.eps_high=0.28",
        "advantage=rloo,policy_loss.eps_high=null",
        "advantage=grpo,policy_loss.eps_high=0.28",
        "advantage=grpo,policy_loss.eps_high=null",
    ]
    assert children[1].tags("p1") == {
        "vary.advantage": "rloo", "vary.policy_loss.eps_high": "null", "compare.parent": "p1"
    }
    assert all(c.seed is None for c in children)


def test_seeds_multiply_the_children_and_name_them():
    children = expand(["advantage=rloo,grpo"], seeds=2)
    assert [c.name for c in children] == [
        "advantage=rloo,seed=0", "advantage=rloo,seed=1", "advantage=grpo,seed=0", "advantage=grpo,seed=1"
    ]
    assert [c.variant for c in children] == ["advantage=rloo"] * 2 + ["advantage=grpo"] * 2
    assert children[3].tags("p")["vary.seed"] == "1"
    # one seed: it overrides the config's seed but is not part of the name
    [only] = expand(["advantage=rloo"], seeds=1)
    assert (only.name, only.seed) == ("advantage=rloo", 0)
    assert "vary.seed" not in only.tags("p")
    # seeds alone are a comparison too
    assert [c.name for c in expand([], seeds=2)] == ["seed=0", "seed=1"]


@pytest.mark.parametrize("varies, seeds, needle", [
    (["a=1,2", "a=3"], None, "varied twice"),
    ([], None, "nothing varies"),
    ([], 1, "nothing varies"),
    (["seed=1,2"], 2, "use one"),
    (["a=1"], 0, "--seeds must be >= 1"),
    (["model.path=x/y,x_y"], None, "same directory name"),
])
def test_bad_expansions_are_config_errors(varies, seeds, needle):
    with pytest.raises(ConfigError, match=needle):
        expand(varies, seeds)


def test_sanitised_directory_names():
    assert sanitise("advantage=rloo,policy_loss.eps_high=0.28") == "advantage=rloo,policy_loss.eps_high=0.28"
    assert sanitise('model.path=/a b/c,x={"k":1}') == "model.path=_a_b_c,x=__k__1_"


def test_child_overrides_load_into_the_child_config(tmp_path):
    cmp = Comparison(GRPO, ["advantage=rloo,grpo", "policy_loss.eps=0.3"], [*TINY, f"output_dir={tmp_path}"],
                     steps=3, seeds=2, console=Console(file=io.StringIO()))
    cmp.parent_run_id = "parent123"
    cmp.model_path = str(tmp_path / "warm" / "final")
    child = cmp.children[1]
    cfg = load_config(GRPO, cmp.child_overrides(child))
    s = load_settings(cfg)
    assert cfg.advantage == "rloo"  # a new component name replaces the whole component (no `scale` left)
    assert cfg.policy_loss.eps == 0.3 and cfg.policy_loss.name == "ppo_clip"
    assert (s.trainer.max_steps, s.seed) == (3, 1)
    assert s.output_dir == str(tmp_path / "compare" / "advantage=rloo,policy_loss.eps=0.3,seed=1")
    assert s.tracking.run_name == "advantage=rloo,policy_loss.eps=0.3,seed=1"
    assert s.tracking.parent_run_id == "parent123"
    assert s.model.path == cmp.model_path
    assert dict(s.tracking.tags) == {
        "vary.advantage": "rloo", "vary.policy_loss.eps": "0.3", "vary.seed": "1", "compare.parent": "parent123"
    }
    assert cmp.shared_warm_start
    varied_model = Comparison(GRPO, ["model.embedded.hidden_size=16,32"], TINY, console=Console(file=io.StringIO()))
    assert not varied_model.shared_warm_start  # each child warm-starts its own architecture


def test_cli_takes_overrides_after_options(monkeypatch):
    seen = {}

    class FakeComparison:
        def __init__(self, config, varies, overrides, steps, seeds, parallel, variants):
            seen.update(config=config, varies=varies, overrides=overrides, steps=steps, seeds=seeds, parallel=parallel,
                        variants=variants)

        def run(self):
            return 1

    monkeypatch.setattr("rlloom.compare.Comparison", FakeComparison)
    code = main(["compare", GRPO, "seed=3", "--vary", "advantage=rloo,grpo", "trainer.lr=0.1", "--steps", "5",
                 "--vary", "kl=k1,k3", "--parallel", "2", "--variant", "big: trainer.prompts_per_step=64"])
    assert code == 1
    assert seen == {"config": GRPO, "varies": ["advantage=rloo,grpo", "kl=k1,k3"],
                    "overrides": ["seed=3", "trainer.lr=0.1"], "steps": 5, "seeds": None, "parallel": 2,
                    "variants": ["big: trainer.prompts_per_step=64"]}


def test_a_bad_value_in_any_variant_fails_before_anything_runs(tmp_path, monkeypatch, capsys):
    """A typo in the second --vary value: one line naming the variant, exit 2, in the time it
    takes to read the configs; no warm start ran, no store or output directory was made."""
    monkeypatch.chdir(tmp_path)
    with_warm_start = [o for o in TINY if not o.startswith("warm_start")]  # the preset's SFT warm start stays on
    for vary, needle in [
        ("advantage=grpo,rlooo", "variant kl.coef=0.01,advantage=rlooo: advantage: unknown advantage 'rlooo' (did you mean 'rloo'?)"),
        ("policy_loss.eps=0.2,-1", "variant kl.coef=0.01,policy_loss.eps=-1: policy_loss: policy_loss 'ppo_clip': eps must be > 0"),
        ("trainer.max_stpes=1,2", "variant kl.coef=0.01,trainer.max_stpes=1: trainer.max_stpes: Key 'max_stpes' not in 'TrainerSettings'"),
    ]:
        code = main(["compare", GRPO, "--vary", "kl.coef=0.01,0.02", "--vary", vary, *with_warm_start])
        err = capsys.readouterr().err
        assert code == 2
        assert err.startswith(f"rlloom: error: {needle}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_clip_range_varied_under_on_policy_updates_is_warned_about():
    def warnings(varies, *overrides):
        return Comparison(GRPO, varies, [*TINY, *overrides], console=Console(file=io.StringIO())).warnings

    [warning] = warnings(["policy_loss.eps_high=0.2,0.28"])
    assert warning.startswith("policy_loss.eps_high has no effect in any variant: policy_loss 'ppo_clip' uses it only")
    assert "trainer.epochs=1" in warning
    assert warnings(["policy_loss.eps_high=0.2,0.28"], "trainer.epochs=2") == []
    # it acts in the variants with two minibatches: no warning
    assert warnings(["policy_loss.eps_high=0.2,0.28", "trainer.minibatches=1,2"]) == []
    assert warnings(["advantage=grpo,rloo"]) == []


def test_error_message_from_a_child_log():
    assert error_message("progress...\nrlloom: error: policy_loss: eps must be > 0\n", 2) == "policy_loss: eps must be > 0"
    traceback = "Traceback (most recent call last):\n  File \"x\", line 1\nRuntimeError: boom\n"
    assert error_message(traceback, 1) == "RuntimeError: boom"
    assert error_message("", -9) == "killed by signal 9"
    assert error_message("", 3) == "exited with status 3"


def test_summary_pools_seeds_and_marks_failures():
    def done(variant, seed, reward, acc, wall, tps):
        child = Child((("advantage", variant),), seed, True)
        history = {"reward/mean": {1: -1.0, 2: reward}, "eval/accuracy": {0: 0.0, 2: acc}, THROUGHPUT: tps}
        return Result(child, "r", True, "", wall, history)

    results = [
        done("grpo", 0, 0.5, 0.25, 10.0, {1: 100.0, 2: 300.0}),
        done("grpo", 1, 0.7, 0.75, 12.0, {1: 200.0, 2: 200.0}),
        done("rloo", 0, 0.1, 0.5, 11.0, {1: 50.0, 2: 50.0}),
        Result(Child((("advantage", "rloo"),), 1, True), "r2", False, "ValueError: bad\nmore", 2.0),
    ]
    grpo, rloo = summarise(results)
    # final values: mean of (0.5, 0.7) = 0.6, sample std = |0.5 - 0.7| / sqrt(2)
    assert grpo["reward/mean"] == pytest.approx(0.6)
    assert grpo["reward/mean std"] == pytest.approx(0.2 / 2**0.5)
    assert grpo["eval/accuracy"] == pytest.approx(0.5)
    assert grpo["wall_s"] == pytest.approx(11.0)
    # throughput: mean over steps per run (200 and 200), then over seeds
    assert grpo[THROUGHPUT] == pytest.approx(200.0) and grpo[f"{THROUGHPUT} std"] == pytest.approx(0.0)
    assert grpo["status"] == "ok"
    # one of two seeds failed: the finished one is summarised, no std from one value
    assert rloo["status"] == "FAILED 1/2"
    assert (rloo["reward/mean"], rloo["reward/mean std"]) == (pytest.approx(0.1), None)
    assert rloo["error"].startswith("ValueError: bad")
    assert winners([grpo, rloo], "eval/accuracy") == [grpo, rloo]  # 0.5 = 0.5: a tie
    assert [r["variant"] for r in winners([grpo, rloo], "reward/mean")] == ["advantage=grpo"]
    assert winners([{**rloo, "eval/accuracy": None}], "eval/accuracy") == []
    assert variant_key("advantage=rloo,policy_loss.eps_high=0.28,x=[1,2]") == "advantage-rloo policy_loss.eps_high-0.28 x-_1 2_"
    md = markdown_table([grpo, rloo])
    # std of (0.5, 0.7) = 0.2/√2 = 0.141; of (0.25, 0.75) = 0.5/√2 = 0.354
    assert "| advantage=grpo | ok | 0.600 ± 0.141 | 0.500 ± 0.354 |" in md
    assert "- advantage=rloo: ValueError: bad" in md


# ---------------------------------------------------------------------- against a real server
@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on loopback (SQLite store, proxied artifacts); its URI."""
    with testing.mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


def test_compare_records_children_failures_table_and_plots(mlflow_server, tmp_path):
    out = io.StringIO()
    with_warm_start = [o for o in TINY if not o.startswith("warm_start")]
    warm = ",".join(o for o in TINY_RUN if o.startswith(("model.", "task.", "trainer.")))
    code = Comparison(
        GRPO,
        ["sampler.max_new_tokens=4,3,0"],  # 0 passes validation and is refused when the child builds its sampler
        [*with_warm_start, f"warm_start.overrides=[{warm}]", f"output_dir={tmp_path / 'cmp'}",
         f"tracking.uri={mlflow_server}", "tracking.experiment=compare-test", "sampler.num_generations=2"],
        steps=2,
        parallel=3,
        console=Console(file=out, width=200),
    ).run()
    assert code == 1  # one variant failed
    printed = out.getvalue()
    assert "FAILED" in printed and "max_new_tokens must be >= 1" in printed
    # between children: which started, which are done, which still run
    assert printed.count("started (log: ") == 3 and "[done 3/3]" in printed
    assert re.search(r"✓ sampler.max_new_tokens=\d .*\[done [123]/3(; running: [^\]]+)?\]", printed)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("compare-test")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on its runs
    [parent] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'cmp-compare'")
    pid = parent.info.run_id
    assert parent.info.status == "FAILED"
    assert parent.data.tags["compare.vary"] == "sampler.max_new_tokens"
    assert parent.data.tags["compare.failed"] == "1"
    assert parent.data.params["trainer.max_steps"] == "2"  # the parent holds the shared config, --steps included

    # the warm start is nested under the parent, tagged, and not one of the compared children
    [warm_run] = client.search_runs([experiment.experiment_id], "tags.phase = 'warm_start'")
    assert warm_run.data.tags["mlflow.parentRunId"] == pid and "compare.parent" not in warm_run.data.tags
    assert warm_run.info.run_name == "cmp-warm_start"

    children = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id], f"tags.`compare.parent` = '{pid}'")}
    assert set(children) == {f"sampler.max_new_tokens={n}" for n in (4, 3, 0)}
    for name, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == pid
        assert run.data.tags["vary.sampler.max_new_tokens"] == name.split("=")[1]
        assert run.data.params["sampler.max_new_tokens"] == name.split("=")[1]
        assert run.data.params["trainer.max_steps"] == "2"  # --steps
        assert run.data.params["tracking.parent_run_id"] == pid

    failed = children["sampler.max_new_tokens=0"]
    assert failed.info.status == "FAILED"
    assert "max_new_tokens must be >= 1" in failed.data.tags["error"] and len(failed.data.tags["error"]) <= 500
    assert "compare.log" in [a.path for a in client.list_artifacts(failed.info.run_id)]

    histories = []
    for name in ("sampler.max_new_tokens=4", "sampler.max_new_tokens=3"):
        run = children[name]
        assert run.info.status == "FINISHED"
        assert run.data.params["model.path"] == str(tmp_path / "cmp" / "warm_start" / "final")  # the shared warm start
        keys = sorted(run.data.metrics)
        histories.append({k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in keys})
    assert histories[0] == histories[1]  # the same metric keys at the same steps
    assert histories[0]["reward/mean"] == [1, 2] and histories[0]["eval/accuracy"] == [0, 2]

    artifacts = {a.path for a in client.list_artifacts(pid)} | {a.path for a in client.list_artifacts(pid, "plots")}
    assert {"plots/curves.png", "summary.json", "summary.md", "config.yaml"} <= artifacts
    summary = json.loads(Path(client.download_artifacts(pid, "summary.json", str(tmp_path))).read_text())
    rows = dict(zip(summary["columns"], zip(*summary["data"])))
    assert rows["variant"] == ("sampler.max_new_tokens=4", "sampler.max_new_tokens=3", "sampler.max_new_tokens=0")
    assert rows["status"] == ("ok", "ok", "FAILED")

    # the link printed at the end opens the children alone, as charts
    url = re.search(r"side by side: (\S+)", printed).group(1)
    assert url.startswith(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning")
    assert pid in urllib.parse.unquote(url) and "compareRunsMode=CHART" in url
    # the parent alone answers "which won": the table as its description, the finals as its metrics
    description = parent.data.tags["mlflow.note.content"]
    assert Path(client.download_artifacts(pid, "summary.md", str(tmp_path))).read_text() in description
    assert "Best final eval/accuracy: **sampler.max_new_tokens=" in description
    assert f"[the variants as charts]({url})" in description
    for name in ("sampler.max_new_tokens=4", "sampler.max_new_tokens=3"):
        final = children[name].data.metrics
        key = name.replace("=", "-")
        assert parent.data.metrics[f"final/eval/accuracy/{key}"] == pytest.approx(final["eval/accuracy"])
        assert parent.data.metrics[f"final/reward/mean/{key}"] == pytest.approx(final["reward/mean"])
    assert not any(k.endswith("sampler.max_new_tokens-0") for k in parent.data.metrics)  # the failed one has none
