"""An output_dir that cannot be written is refused before anything trains (the warm start
included), in one line naming the path; a disk that fills up mid-run is one line too."""
import errno
import os

from faults import GRPO, error_lines, read_only_dir, runs, small_disk, tiny_run  # noqa: F401  (fixtures)

from rlloom.cli import main


def _refused(capsys, tmp_path, output_dir, *extra):
    code = main(["train", GRPO, *tiny_run(tmp_path, output_dir, *extra)])
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    [line] = error_lines(err)
    assert not runs(tmp_path), "nothing may start (no MLflow run) when output_dir cannot be written"
    return line


def test_a_file_where_output_dir_should_be(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "taken"
    taken.write_text("my notes")
    line = _refused(capsys, tmp_path, taken)
    assert line == f"rlloom: error: output_dir: {taken} is a file, not a directory"
    assert taken.read_text() == "my notes"


def test_a_file_where_a_parent_of_output_dir_should_be(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parent").write_text("")
    line = _refused(capsys, tmp_path, tmp_path / "parent" / "run")
    assert line.startswith(f"rlloom: error: output_dir: cannot write to {tmp_path / 'parent' / 'run'}: ")


def test_a_read_only_output_dir_is_refused_before_the_warm_start(tmp_path, capsys, monkeypatch, read_only_dir):
    monkeypatch.chdir(tmp_path)
    # the preset's warm start (an SFT run into <output_dir>/warm_start) would train first
    overrides = [o for o in tiny_run(tmp_path, read_only_dir) if not o.startswith("warm_start")]
    code = main(["train", GRPO, *overrides])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    [line] = error_lines(err)
    assert line.startswith(f"rlloom: error: output_dir: cannot write to {read_only_dir}: ")
    assert line.endswith(("Read-only file system", "Permission denied"))
    assert not runs(tmp_path) and list(read_only_dir.iterdir()) == []


def test_a_full_disk_is_refused_before_training(tmp_path, capsys, monkeypatch, small_disk):
    monkeypatch.chdir(tmp_path)
    disk = small_disk(tmp_path / "disk", 64)
    (disk / "run").mkdir()
    _fill(disk / "ballast")
    line = _refused(capsys, tmp_path, disk / "run")
    assert line == f"rlloom: error: output_dir: cannot write to {disk / 'run'}: No space left on device"


def _fill(file):
    """Write ``file`` until its disk is full."""
    fd = os.open(file, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
