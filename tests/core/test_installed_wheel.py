"""The built wheel, installed into a fresh virtual environment (not editable), runs presets by
name from an empty directory: the presets ship inside the package."""
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from rlloom.testing import TINY

ROOT = Path(__file__).resolve().parents[2]
# a warm start of two tiny steps: `warm_start: {config: sft}` must resolve from the wheel too
TINY_WARM_START = [o for o in TINY if not o.startswith("warm_start.")] + [
    "warm_start.overrides=[" + ",".join(o for o in TINY if not o.startswith(("warm_start.", "trainer.eval"))) + "]"
]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """A fresh venv holding the built wheel; the dependencies come from this environment
    (a ``.pth`` file), so only rlloom itself is installed, from the wheel."""
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(base / "dist"), str(ROOT)], check=True, capture_output=True)
    [wheel] = (base / "dist").glob("rlloom-*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    return env_dir / "bin"


def _run(bin_dir, args, cwd):
    return subprocess.run([str(bin_dir / "rlloom"), *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_wheel_runs_quickstart_by_name_from_an_empty_directory(wheel_env, tmp_path):
    where = subprocess.check_output([wheel_env / "python", "-c", "import rlloom; print(rlloom.__file__)"],
                                    text=True, cwd=tmp_path)
    assert str(ROOT) not in where and "site-packages" in where  # the installed copy, not the checkout
    presets = _run(wheel_env, ["presets"], tmp_path)
    assert presets.returncode == 0, presets.stderr
    assert any(line.startswith("quickstart ") for line in presets.stdout.splitlines())
    proc = _run(wheel_env, ["train", "quickstart", *TINY_WARM_START, "output_dir=run"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done:" in proc.stdout
    assert (tmp_path / "run" / "warm_start" / "final").is_dir()  # the sft preset, found in the wheel
    assert (tmp_path / "run" / "final").is_dir()
