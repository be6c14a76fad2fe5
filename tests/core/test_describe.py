"""``rlloom show``: a component's parameters, types, defaults and meanings, its plugin and docstring."""
import inspect
import json

from rlloom.cli import main
from rlloom.describe import meaning
from rlloom.plugins.grpo import GRPOAdvantage


def test_show_json_gives_parameters_plugin_and_docstring(capsys):
    assert main(["show", "advantage", "grpo", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["plugin"], shown["package"], shown["version"]) == ("rlloom.plugins.grpo", "rlloom", "0.1.0")
    assert shown["call"] == "advantage(batch) -> AdvantageOutput: credit per completion token."
    assert shown["docstring"] == inspect.getdoc(GRPOAdvantage)
    params = {p["name"]: p for p in shown["parameters"]}
    assert list(params) == ["scale", "eps", "leave_one_out", "clip"]
    assert (params["scale"]["type"], params["scale"]["default"], params["scale"]["required"]) == ("str", "group", False)
    assert (params["clip"]["type"], params["clip"]["default"]) == ("float | None", None)
    assert params["clip"]["meaning"] == "clip clips advantages to [−clip, clip]."
    assert params["scale"]["meaning"].startswith("scale: group divides by the group's std, batch by")


def test_show_lists_required_parameters_engine_keys_and_nested_components(capsys):
    assert main(["show", "reward", "format", "--json"]) == 0
    params = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parameters"]}
    assert params["pattern"]["required"] and params["pattern"]["meaning"] == "pattern: the regex a completion must match whole."
    assert params["weight"]["engine"] and params["weight"]["default"] == 1.0
    assert params["alias"]["engine"] and params["alias"]["meaning"].startswith("alias names the reward in metrics")
    assert main(["show", "sampler", "dynamic", "--json"]) == 0
    params = {p["name"]: p for p in json.loads(capsys.readouterr().out)["parameters"]}
    assert params["base"]["type"] == "a sampler spec" and params["base"]["required"]


def test_show_table(capsys):
    assert main(["show", "kl", "k3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "kl k3: from plugin rlloom.plugins.kl (rlloom 0.1.0)"
    assert lines[3].split() == ["parameter", "type", "default", "meaning"]
    assert any(line.split()[:4] == ["coef", "(engine)", "Optional[float]", "None"] for line in lines)
    assert out.rstrip().endswith(inspect.getdoc(__import__("rlloom.plugins.kl", fromlist=["K3"]).K3).rstrip())


def test_show_unknown_name_is_one_line_with_suggestion(capsys):
    assert main(["show", "advantage", "grop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlloom: error: unknown advantage 'grop' (did you mean 'grpo'?); known: ")
    assert main(["show", "advantages", "grpo"]) == 2
    assert "did you mean 'advantage'" in capsys.readouterr().err


def test_meaning_is_the_sentence_that_starts_with_the_parameter():
    doc = (
        "Scales rewards (Liu et al. 2025). ``a``: the first.\n"
        "Dr. GRPO says ``b`` matters; ``c`` is the third, e.g. 3.\n\n"
        "Peer conventions: ``b`` is 1 in TRL."
    )
    assert meaning(doc, "a") == "a: the first."
    assert meaning(doc, "b") == "Dr. GRPO says b matters"  # the first mention (none starts with it)
    assert meaning(doc, "c") == "c is the third, e.g. 3."
    assert meaning(doc, "d") == ""
