"""``scripts/mlflow_views.py`` against a real compare, a real ``mlflow server`` and headless
Chromium: it exits 0 only when each page's DOM shows the runs it must (skipped without
Chromium)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mlflow_views.py"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_the_script_screenshots_the_runs_and_the_compare_view(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--steps", "2", "--warm-steps", "2"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("mlflow-runs.png", "mlflow-compare.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width == 1200
            assert len(image.convert("L").getcolors(1 << 16)) > 8  # a drawn page, not a blank one


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (Debian: apt-get install chromium)")
def test_a_store_without_a_compare_is_an_error(tmp_path):
    (tmp_path / "store").mkdir()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), "--store", str(tmp_path / "store")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "no rlloom compare in" in proc.stderr
    assert not (tmp_path / "out").exists()
