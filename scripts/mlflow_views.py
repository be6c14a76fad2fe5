"""Screenshots of a comparison in the MLflow UI, taken by headless Chromium.

Runs a short ``rlloom compare`` in a scratch directory (or uses ``--store``, a directory
holding the ``mlflow.db`` of one), serves it with ``mlflow server`` on a free loopback port,
and saves two pictures into ``--out``:

- ``mlflow-runs.png``: the experiment's page as it opens (its runs table);
- ``mlflow-compare.png``: the page ``rlloom compare`` links to (its variants as charts).

Each page's rendered DOM is checked for the runs it must show; a page that does not show
them is an error (exit 1). Needs ``chromium`` on PATH (Debian: ``apt-get install chromium``).

    python scripts/mlflow_views.py --out docs/images
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WINDOW = (1600, 1000)
WIDTH = 1200  # of the saved pictures
RENDER_MS = 20000  # virtual time the page gets to load its data and draw


def short_compare(workdir: Path, steps: int, warm_steps: int) -> None:
    """``rlloom compare grpo`` of two advantages × two KL coefficients, from an SFT warm start
    of ``warm_steps``, on the embedded model, with smaller batches and evaluations."""
    warm = f"[trainer.max_steps={warm_steps},trainer.eval_every={max(1, warm_steps // 4)},trainer.eval_size=128]"
    cmd = [sys.executable, "-m", "rlloom.cli", "compare", "grpo", "--vary", "advantage=grpo,rloo",
           "--vary", "kl.coef=0,0.02", "--steps", str(steps), "--parallel", "2", f"warm_start.overrides={warm}",
           "trainer.prompts_per_step=16", f"trainer.eval_every={max(1, steps // 6)}", "trainer.eval_size=128",
           "output_dir=runs/views", "tracking.experiment=views", "tracking.run_name=views-compare"]
    subprocess.run(cmd, cwd=workdir, check=True, stdout=subprocess.DEVNULL)


def chromium(profile: Path, *args: str) -> str:
    """Headless Chromium with a fresh profile; its stdout."""
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           f"--virtual-time-budget={RENDER_MS}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def shoot(url: str, path: Path, must_show: list[str], profile: Path) -> None:
    """Save the page at ``url`` as ``path`` (``WIDTH`` wide), after checking that its DOM
    holds every text of ``must_show``."""
    from PIL import Image

    dom = chromium(profile, "--dump-dom", url)
    missing = [text for text in must_show if text not in dom]
    if missing:
        raise SystemExit(f"{url} does not show {', '.join(missing)}")
    chromium(profile, f"--screenshot={path}", url)
    with Image.open(path) as image:
        small = image.convert("RGB").resize((WIDTH, round(image.height * WIDTH / image.width)), Image.LANCZOS)
    small.quantize(colors=128).save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the two PNGs go")
    parser.add_argument("--store", type=Path, help="a directory with the mlflow.db of a compare (default: run one)")
    parser.add_argument("--steps", type=int, default=30, help="RL steps of each variant of the short compare")
    parser.add_argument("--warm-steps", type=int, default=200, help="SFT steps of its warm start")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        raise SystemExit("chromium not found (Debian: apt-get install chromium)")
    from mlflow import MlflowClient

    from rlloom.compare import variants_url
    from rlloom.testing import mlflow_server
    from rlloom.tracking import experiment_url

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        store = args.store or scratch
        if args.store is None:
            short_compare(scratch, args.steps, args.warm_steps)
        with mlflow_server(store, scratch / "server.log") as uri:
            client = MlflowClient(uri)
            compares = [
                r for e in client.search_experiments()
                for r in client.search_runs([e.experiment_id], order_by=["attributes.start_time DESC"])
                if "compare.children" in r.data.tags
            ]
            if not compares:
                raise SystemExit(f"no rlloom compare in {store / 'mlflow.db'}")
            parent = max(compares, key=lambda r: r.info.start_time)
            pid, experiment_id = parent.info.run_id, parent.info.experiment_id
            children = [r.info.run_name for r in client.search_runs([experiment_id], f"tags.`compare.parent` = '{pid}'")]
            args.out.mkdir(parents=True, exist_ok=True)
            shoot(experiment_url(uri, experiment_id), args.out / "mlflow-runs.png",
                  ["Runs", parent.info.run_name], scratch / "profile")
            shoot(variants_url(uri, experiment_id, pid), args.out / "mlflow-compare.png", children, scratch / "profile")
    print(f"wrote {args.out / 'mlflow-runs.png'} and {args.out / 'mlflow-compare.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
