"""The decoding benchmark runs (tiny sizes); it is not a timing test."""
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode_steps.py"


def test_decode_benchmark_runs_at_tiny_sizes(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith("| W1 |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[1]] = cells
    assert set(rows) == {"fp32", "bf16"}, proc.stdout
    for cells in rows.values():
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[4]) > 0
    assert rows["fp32"][5] == "True"  # in float32 both ways draw the same tokens
