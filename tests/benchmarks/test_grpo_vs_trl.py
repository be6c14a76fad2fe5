"""The rlloom-vs-TRL benchmark script runs (tiny sizes); it is not a timing test."""
import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "grpo_vs_trl.py"


def test_benchmark_runs_at_tiny_sizes(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--workloads", "W1", "--configs", "fp32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| W1 | fp32 |")]
    assert rows, proc.stdout
    cells = [c.strip() for c in rows[-1].strip("|").split("|")]
    assert float(cells[2]) > 0  # rlloom s/step
    if importlib.util.find_spec("trl") is None:
        assert "TRL is not installed" in proc.stdout and cells[3] == "—"
    else:
        assert float(cells[4]) > 0  # rlloom / TRL
        assert 0 <= float(cells[6]) <= float(cells[4])  # bound: the arithmetic alone, below the ratio


def test_arithmetic_counts_two_flops_per_parameter_per_token_forward_and_four_more_backward():
    spec = importlib.util.spec_from_file_location("grpo_vs_trl", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    work = bench.Workload(hidden=8, layers=1, heads=1, intermediate=8, tokens=16)  # 8 × 8 rows × 16 tokens
    assert bench.arithmetic(work, params=1000) == (2 * 1000 * 1024, 6 * 1000 * 1024)
    with_kl = bench.Workload(hidden=8, layers=1, heads=1, intermediate=8, tokens=16, beta=0.1)
    assert bench.arithmetic(with_kl, params=1000) == (2 * 1000 * 1024, 8 * 1000 * 1024)


def test_profile_splits_each_phase_of_one_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--profile", "--workloads", "W1", "--configs", "fp32"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines():
        if line.startswith("| W1 | fp32 |"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[2]] = [float(c) for c in cells[3:]]
    assert set(rows) == {"sample", "update"}, proc.stdout
    for wall, matmul, attention, other, outside, at_rate in rows.values():
        assert wall > 0 and min(matmul, attention, other, at_rate) >= 0
