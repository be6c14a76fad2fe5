"""Bad weights are found when they are loaded, named in one line: a truncated, missing or
bad-header model.safetensors, or one holding NaN, in the checkpoint resume takes (which falls
back to the checkpoint before only with ``resume_fallback=true``) or at ``model.path``."""
import json
import struct

import pytest
from faults import GRPO, error_lines, tiny_run

from rlloom.cli import main

pytestmark = pytest.mark.slow


def _truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _delete(file):
    file.unlink()


def _bad_header(file):
    data = file.read_bytes()
    file.write_bytes(struct.pack("<Q", 2**40) + data[8:])  # a header length past the end of the file


def _nan(file):
    """One float32 weight set to NaN in place: the file keeps its size and layout."""
    data = bytearray(file.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + length + header[name]["data_offsets"][0]
    data[start : start + 4] = struct.pack("<f", float("nan"))
    file.write_bytes(bytes(data))


CORRUPTIONS = {  # how the file is damaged → what the one line says about it
    "truncated": (_truncate, "were written (truncated or replaced)"),
    "missing": (_delete, "model.safetensors is missing"),
    "bad_header": (_bad_header, "cannot be read (truncated or not a safetensors file"),
    "nan": (_nan, "holds non-finite weights (NaN or inf) in "),
}


@pytest.fixture
def two_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert main(["train", GRPO, *tiny_run(tmp_path, out, "trainer.max_steps=2", "trainer.checkpoint_every=1")]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_weights_in_the_newest_checkpoint_stop_resume_in_one_line(corruption, two_checkpoints, tmp_path, capsys):
    damage, says = CORRUPTIONS[corruption]
    newest = two_checkpoints / "checkpoints" / "step_0000002"
    damage(newest / "model.safetensors")
    resume = tiny_run(tmp_path, two_checkpoints, "trainer.max_steps=3", "resume=true")

    code = main(["train", GRPO, *resume])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(f"rlloom: error: {newest / 'model.safetensors'} ")
    assert says in line
    assert line.endswith("(resume_fallback=true resumes from the checkpoint before it)")
    assert not (two_checkpoints / "checkpoints" / "step_0000003").exists()

    if corruption in ("truncated", "nan"):  # told to, resume falls back to the checkpoint before
        assert main(["train", GRPO, *resume, "resume_fallback=true"]) == 0
        err = capsys.readouterr().err
        assert f"rlloom: resume: from {two_checkpoints / 'checkpoints' / 'step_0000001'}; skipped step_0000002: " in err
        assert (two_checkpoints / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("corruption", ["truncated", "nan"])
def test_corrupt_weights_at_model_path_are_named(corruption, two_checkpoints, tmp_path, capsys):
    damage, says = CORRUPTIONS[corruption]
    model = two_checkpoints / "final"
    damage(model / "model.safetensors")
    code = main(["train", GRPO, *tiny_run(tmp_path, tmp_path / "next", f"model.path={model}")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(f"rlloom: error: model.path: {model}")
    assert ("cannot be read (truncated or not a safetensors file" if corruption == "truncated" else says) in line
