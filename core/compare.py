"""``rlloom compare``: variants of one config as MLflow child runs under one parent run.

``--vary KEY=V1,V2`` (repeatable) gives the values of one key; ``--variant "NAME: K1=V K2=V"``
(repeatable) is one named set of values that go together (a different algorithm: sampler,
advantage and value loss at once, with its own step count). The children are the cross
product of the named variants (when given) and all variations, times seeds ``0..K-1`` with
``--seeds K``. Values are read like
YAML scalars, exactly as ``key=value`` overrides are (``0.28`` a float, ``rloo`` a string,
``null`` None); a value that names another component replaces the whole component.

Before anything runs, every variant's config is loaded and validated, and its policy loss
and update rule are built: a bad value in any variant is a ``ConfigError`` naming it. A
varied key that provably changes nothing in any variant (``pipeline.inert_parameters``: a
clip range under on-policy updates) gets a warning line.

Each child is a subprocess ``python -m rlloom.cli train CONFIG ...`` with its overrides,
its own ``output_dir`` (``<output_dir>/compare/<name>``) and ``tracking.parent_run_id`` set;
its output goes to ``compare.log`` there. Subprocesses, also in sequential mode, give each
child fresh accelerate/torch/MLflow state and keep one child's crash from ending the rest.
``--parallel P`` runs up to P at once; they share the machine's devices, and its CPUs
through ``OMP_NUM_THREADS`` = CPUs / P unless that is set.

A warm start is run once, before the children, as a run nested under the parent, and every
child starts from its model, unless a varied key is under ``model.`` or ``warm_start.``:
then each child warm-starts itself. A line says when each child starts and ends, with how
many are done and which are running.

Each child runs in its own session, so a signal reaches it through the parent alone: on
SIGTERM or Ctrl-C the parent starts no further child, sends each running one SIGTERM (it ends
its own run KILLED and keeps its last checkpoint), kills any still running ``STOP_TIMEOUT_S``
later (its run then marked KILLED here), marks the parent run KILLED and says which children
it stopped, with their logs.

A child that fails is a FAILED child run with tag ``error``; the others finish. At the end
the parent run gets the summary table (``summary.json``, an MLflow table, and
``summary.md``; as Markdown with the best variant named, its description) and
``plots/curves.png`` (reward/mean and eval/accuracy of every variant, the mean over seeds
with a min–max band), each variant's final values as its metrics
(``final/<metric>/<variant>``), and is FAILED when any child failed; the table is printed,
then a link to the variants side by side in the MLflow UI (``variants_url``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.markup import escape

from rlloom.errors import ERROR_TAG_LEN, ConfigError, RlloomError, one_line
from rlloom.stopping import raise_if_stopping

PLOTTED = ("reward/mean", "eval/accuracy")
THROUGHPUT = "throughput/tokens_per_s"
COLUMNS = (  # (summary key, header, decimals)
    ("reward/mean", "reward/mean", 3),
    ("eval/accuracy", "eval/accuracy", 3),
    ("wall_s", "wall s", 1),
    (THROUGHPUT, "tokens/s", 0),
)
SHARED_WARM_START_BLOCKERS = ("model.", "warm_start.")
LOG_NAME = "compare.log"
STOP_TIMEOUT_S = 30
"""Seconds the children of a stopped comparison get to end their runs before they are killed."""


# ---------------------------------------------------------------------- variants
def _split_outside(text: str, is_separator) -> list[str]:
    """``text`` cut at the characters ``is_separator`` accepts, except inside brackets or
    quotes; the parts stripped."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif depth == 0 and is_separator(ch):
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def split_values(text: str) -> list[str]:
    """``"a,[1,2],'x,y'"`` → ``["a", "[1,2]", "'x,y'"]``: commas inside brackets or quotes
    do not split."""
    return _split_outside(text, lambda ch: ch == ",")


def parse_value(text: str) -> Any:
    """A value as a ``key=value`` override reads it (YAML scalars, flow lists and maps)."""
    try:
        value = OmegaConf.from_dotlist([f"v={text}"])["v"]
    except Exception as exc:  # OmegaConf and YAML errors alike
        raise ConfigError(f"--vary: cannot read value {text!r}: {exc}") from None
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def format_value(value: Any) -> str:
    """A parsed value as it appears in names and tags (YAML spelling: null, true, 0.28)."""
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def parse_vary(spec: str) -> tuple[str, list[str]]:
    """``"KEY=V1,V2"`` → (KEY, [V1, V2]) with the values' texts as given."""
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--vary {spec!r}: expected KEY=V1,V2[,...]")
    texts = split_values(values)
    if any(not t for t in texts):
        raise ConfigError(f"--vary {spec!r}: empty value")
    shown = [format_value(parse_value(t)) for t in texts]
    if len(set(shown)) != len(shown):
        raise ConfigError(f"--vary {spec!r}: a value is given twice")
    return key, texts


def sanitise(name: str) -> str:
    """A child name as a directory name: anything but letters, digits and ``._,=+-`` → ``_``."""
    return re.sub(r"[^\w.,=+-]", "_", name)


def parse_variant(spec: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``"NAME: K1=V1 K2=V2"`` → (NAME, ((K1, V1), (K2, V2))): a named set of values that go
    together. Values are separated by whitespace outside brackets and quotes, so flow maps
    (``sampler={name: generate, max_new_tokens: 10}``) need no quoting inside the spec."""
    name, sep, rest = spec.partition(":")
    name = name.strip()
    if not sep or not name or not re.fullmatch(r"[\w.+-]+", name):
        raise ConfigError(f"--variant {spec!r}: expected 'NAME: KEY=VALUE [KEY=VALUE ...]' (NAME: letters, digits, ._+-)")
    pairs: list[tuple[str, str]] = []
    for item in (p for p in _split_outside(rest, str.isspace) if p):
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or not text.strip():
            raise ConfigError(f"--variant {name}: {item!r} is not KEY=VALUE")
        if key in dict(pairs):
            raise ConfigError(f"--variant {name}: key {key!r} is set twice")
        parse_value(text)  # unreadable values are named here, before anything runs
        pairs.append((key.strip(), text.strip()))
    if not pairs:
        raise ConfigError(f"--variant {name}: no KEY=VALUE given")
    return name, tuple(pairs)


@dataclass(frozen=True)
class Child:
    """One child run: the values it sets (key, value text), its seed (None: the config's),
    and the named variant it belongs to (``label``, with the values ``bundle`` it sets
    first; None without ``--variant``). The seed is part of its name and tags when the
    comparison runs several seeds."""

    assignments: tuple[tuple[str, str], ...]
    seed: int | None = None
    seed_varies: bool = False
    label: str | None = None
    bundle: tuple[tuple[str, str], ...] = ()

    @property
    def variant(self) -> str:
        """The name without the seed: what the summary groups seeds by."""
        parts = [self.label] if self.label else []
        parts += [f"{k}={format_value(parse_value(t))}" for k, t in self.assignments]
        return ",".join(parts) or "base"

    @property
    def name(self) -> str:
        if not self.seed_varies:
            return self.variant
        prefix = self.variant + "," if self.assignments or self.label else ""
        return f"{prefix}seed={self.seed}"

    @property
    def values(self) -> tuple[tuple[str, str], ...]:
        """Every (key, value text) the child sets: its named variant's, then its ``--vary`` ones."""
        return (*self.bundle, *self.assignments)

    def tags(self, parent_run_id: str) -> dict[str, str]:
        tags = {"vary.variant": self.label} if self.label else {}
        tags.update({f"vary.{k}": format_value(parse_value(t)) for k, t in self.assignments})
        if self.seed_varies:
            tags["vary.seed"] = str(self.seed)
        tags["compare.parent"] = parent_run_id
        return tags


def expand(varies: Iterable[str], seeds: int | None = None, variants: Iterable[str] = ()) -> list[Child]:
    """The cross product of the named ``--variant`` specs (slowest) and the ``--vary`` specs
    (first key slowest), times seeds 0..K-1."""
    named = [parse_variant(spec) for spec in variants]
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise ConfigError(f"--variant: a name is given twice ({', '.join(names)})")
    axes: list[list[tuple[str, str]]] = []
    keys: set[str] = set()
    for spec in varies:
        key, texts = parse_vary(spec)
        if key in keys:
            raise ConfigError(f"--vary: key {key!r} is varied twice; give all its values in one --vary")
        if key == "seed" and seeds is not None:
            raise ConfigError("--vary seed=... and --seeds both set the seed; use one")
        clash = [n for n, pairs in named if key in dict(pairs)]
        if clash:
            raise ConfigError(f"--vary {key}: the key is also set by --variant {clash[0]}; set it in one place")
        keys.add(key)
        axes.append([(key, t) for t in texts])
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    if not axes and not named and not (seeds and seeds > 1):
        raise ConfigError("compare: nothing varies; give --vary KEY=V1,V2, --variant 'NAME: KEY=V ...' or --seeds K with K > 1")
    combos: list[tuple[tuple[str, str], ...]] = [()]
    for axis in axes:
        combos = [(*c, a) for c in combos for a in axis]
    seed_list: list[int | None] = list(range(seeds)) if seeds else [None]
    labelled = named or [(None, ())]
    children = [
        Child(c, s, len(seed_list) > 1, label, bundle) for label, bundle in labelled for c in combos for s in seed_list
    ]
    dirs = [sanitise(c.name) for c in children]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("--vary: two children get the same directory name; use values that differ in letters or digits")
    return children


# ---------------------------------------------------------------------- running
@dataclass
class Result:
    """What a child left: its run, whether it finished, the error, the metric histories."""

    child: Child
    run_id: str | None = None
    ok: bool = False
    error: str = ""
    wall_s: float = 0.0
    history: dict[str, dict[int, float]] = field(default_factory=dict)

    def final(self, key: str) -> float | None:
        if key == "wall_s":
            return self.wall_s
        steps = self.history.get(key)
        if not steps:
            return None
        if key == THROUGHPUT:
            return statistics.fmean(steps.values())
        return steps[max(steps)]


def error_message(log: str, returncode: int) -> str:
    """The error a child printed: the CLI's one-line message, else the last line (a
    traceback's exception), else its exit status."""
    marker = "rlloom: error: "
    if marker in log:
        return log.rsplit(marker, 1)[1].strip()
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    if lines:
        return lines[-1]
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class Comparison:
    """Runs the children of one compare and records them under one parent run."""

    def __init__(
        self,
        config: str | Path,
        varies: list[str],
        overrides: list[str] = (),
        steps: int | None = None,
        seeds: int | None = None,
        parallel: int = 1,
        variants: list[str] = (),
        console=None,
    ):
        from rich.console import Console

        from rlloom.config import find_config, load_config, validate_config
        from rlloom.files import check_output_dir
        from rlloom.settings import load_settings
        from rlloom.tracking import resolve_uri

        if parallel < 1:
            raise ConfigError(f"--parallel must be >= 1, got {parallel}")
        if steps is not None and steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {steps}")
        self.config = find_config(config).resolve()
        # shared by every child (and logged on the parent): the overrides, then --steps
        self.overrides = [*overrides, *([f"trainer.max_steps={steps}"] if steps is not None else [])]
        self.parallel = parallel
        self.children = expand(varies, seeds, variants)
        self.base = load_config(self.config, self.overrides)
        validate_config(self.base)
        self.settings = load_settings(self.base)
        self.uri = resolve_uri(self.settings.tracking.uri)
        self.experiment = self.settings.tracking.experiment
        self.root = Path(self.settings.output_dir) / "compare"
        # what varies, as named in tags and the description: "variant" for named variants
        self.varied = ["variant"] * bool(variants) + [k for k, _ in self.children[0].assignments]
        set_keys = {k for child in self.children for k, _ in child.values}
        self.shared_warm_start = not any(k.startswith(SHARED_WARM_START_BLOCKERS) for k in set_keys)
        self.console = console or Console()
        self.model_path: str | None = None
        self.parent_run_id: str | None = None
        self.warnings = self._check_variants()
        check_output_dir(self.settings.output_dir)
        self._lock = threading.Lock()
        self.running: list[str] = []
        self.finished = 0
        self._procs: dict[Child, subprocess.Popen] = {}  # the running children's processes
        self._stopping = False
        self.stopped: dict[Child, subprocess.Popen] = {}  # what a stop found running

    def _check_variants(self) -> list[str]:
        """Load and validate every variant's config before anything runs (a typo in any
        ``--vary`` value is a ``ConfigError`` naming the variant); returns a warning for each
        varied key that provably changes nothing in any variant (``inert_parameters``)."""
        from rlloom.config import disabled_plugins, load_config, validate_config
        from rlloom.pipeline import inert_parameters
        from rlloom.registry import get_registry
        from rlloom.settings import load_settings

        variants = {c.variant: c for c in self.children}.values()
        reasons: dict[str, list[str]] = {k: [] for k, _ in self.children[0].assignments}
        for child in variants:
            try:
                cfg = load_config(self.config, self.child_overrides(child))
                validate_config(cfg)
                settings = load_settings(cfg)
                inert = inert_parameters(settings, get_registry(disabled_plugins(cfg))) if reasons else {}
            except RlloomError as exc:
                raise ConfigError(f"variant {child.variant}: {exc}") from None
            for key in reasons:
                if key in inert:
                    reasons[key].append(inert[key])
        return [
            f"{key} has no effect in any variant: {found[0]}"
            for key, found in reasons.items()
            if len(found) == len(variants)
        ]

    # ------------------------------------------------------------------ pieces
    def child_dir(self, child: Child) -> Path:
        return self.root / sanitise(child.name)

    def child_overrides(self, child: Child) -> list[str]:
        """The child's ``train`` overrides: the shared ones, its seed, its values, then where
        it writes and logs."""
        out = list(self.overrides)
        if child.seed is not None:
            out.append(f"seed={child.seed}")
        out += [f"{k}={t}" for k, t in child.values]
        out += [  # JSON-quoted: YAML reads them back as the exact strings
            f"output_dir={json.dumps(str(self.child_dir(child)))}",
            f"tracking.uri={json.dumps(self.uri)}",
            f"tracking.experiment={json.dumps(self.experiment)}",
            f"tracking.run_name={json.dumps(child.name)}",
            f"tracking.parent_run_id={json.dumps(self.parent_run_id)}",
            f"tracking.tags={json.dumps(child.tags(self.parent_run_id))}",
        ]
        if self.model_path:
            out.append(f"model.path={json.dumps(self.model_path)}")
        return out

    def command(self, child: Child) -> list[str]:
        return [sys.executable, "-m", "rlloom.cli", "train", str(self.config), *self.child_overrides(child)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.parallel > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        return env

    # ------------------------------------------------------------------ the run
    def run(self) -> int:
        """Parent run, warm start, children, summary; 0 when every child finished, else 1."""
        from mlflow import MlflowClient

        from rlloom.tracking import experiment_id

        for warning in self.warnings:
            self.console.print(f"[yellow]compare: warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
        self.client = MlflowClient(self.uri)
        self.experiment_id = experiment_id(self.client, self.experiment)
        self._start_parent()
        status = "FAILED"
        try:
            self._warm_start()
            results = self._run_children()
            failed = sum(not r.ok for r in results)
            self._report(results)
            status = "FAILED" if failed else "FINISHED"
            return 1 if failed else 0
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (the CLI's Terminated)
            status = "KILLED"
            raise type(exc)(self.stop_message()) from None
        except Exception as exc:
            self.client.set_tag(self.parent_run_id, "error", one_line(exc)[:ERROR_TAG_LEN])
            raise
        finally:
            self.client.set_terminated(self.parent_run_id, status)

    def _start_parent(self) -> None:
        from rlloom.settings import as_plain

        name = self.settings.tracking.run_name or f"{Path(self.settings.output_dir).name}-compare"
        seeds = {c.seed for c in self.children}
        tags = {
            "compare.vary": ",".join(self.varied),
            "compare.children": str(len(self.children)),
            "compare.seeds": str(len(seeds)),
            "algorithm": str(self.settings.algorithm),
            **{str(k): str(v) for k, v in self.settings.tracking.tags.items()},
        }
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_run_id = run.info.run_id
        config = as_plain(self.settings)
        self._log_params(self.parent_run_id, config)
        self.client.log_text(self.parent_run_id, OmegaConf.to_yaml(OmegaConf.create(config)), "config.yaml")
        self.console.print(
            f"compare: {len(self.children)} children, {self.parallel} at a time; parent run "
            f"[bold]{escape(name)}[/] ({self.parent_run_id}) in experiment '{escape(self.experiment)}' at {self.uri}",
            soft_wrap=True,
        )

    def _log_params(self, run_id: str, config: dict) -> None:
        from mlflow.entities import Param

        from rlloom.tracking import flatten

        params = flatten(config)
        keys = sorted(params)
        for i in range(0, len(keys), 100):
            self.client.log_batch(run_id, params=[Param(k, params[k]) for k in keys[i : i + 100]])

    def _warm_start(self) -> None:
        from rlloom.warm_start import prepare_warm_start
        from rlloom.settings import load_settings

        if not self.shared_warm_start or not self.settings.warm_start.config or self.settings.model.path:
            return
        self.console.print("compare: warm start, shared by every child")
        nested = OmegaConf.merge(self.base, {"tracking": {"parent_run_id": self.parent_run_id}})
        path = load_settings(prepare_warm_start(nested)).model.path
        self.model_path = str(Path(path).resolve())

    def _run_children(self) -> list[Result]:
        """Every child, ``parallel`` at a time; on SIGTERM or Ctrl-C (``KeyboardInterrupt``
        in this, the main thread) the running ones are stopped before it propagates."""
        self.root.mkdir(parents=True, exist_ok=True)
        env = self._env()
        pool = ThreadPoolExecutor(max_workers=self.parallel)
        try:
            futures = [pool.submit(self._run_child, child, env) for child in self.children]
            while not all(f.done() for f in futures):
                wait(futures, timeout=1.0)
                raise_if_stopping()  # a SIGTERM whose first raise Python dropped
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            self._stop_children()
            raise
        finally:
            pool.shutdown(cancel_futures=True)

    def _run_child(self, child: Child, env: dict[str, str]) -> Result:
        start = time.perf_counter()
        proc = self._start_child(child, env)
        if proc is None:
            return Result(child, error="stopped")
        proc.wait()
        with self._lock:
            del self._procs[child]
            if self._stopping:  # the stop reports it
                return Result(child, error="stopped")
        log_path = self.child_dir(child) / LOG_NAME
        result = Result(child, wall_s=time.perf_counter() - start)
        result.run_id = self._find_run(child)
        if proc.returncode == 0 and result.run_id is not None:
            result.ok = True
            result.history = self._histories(result.run_id)
            line = f"[green]✓[/] {escape(child.name)}  ({result.wall_s:.1f} s)"
        else:
            log_text = log_path.read_text(errors="replace")
            own = self.client.get_run(result.run_id).data.tags.get("error") if result.run_id else None
            result.error = own or (
                error_message(log_text, proc.returncode) if proc.returncode else "finished without an MLflow run"
            )
            self._record_failure(result, log_path)
            line = f"[red]✗ {escape(child.name)}[/]: {escape(result.error.splitlines()[0][:200])}  (log: {escape(str(log_path))})"
        with self._lock:
            self.running.remove(child.name)
            self.finished += 1
            self.console.print(f"{line}  {self._state()}", highlight=False, soft_wrap=True)
        return result

    def _start_child(self, child: Child, env: dict[str, str]) -> subprocess.Popen | None:
        """The child's process, started in a session of its own (a Ctrl-C at the terminal
        reaches the parent alone, which stops it) and printed; None once stopping."""
        directory = self.child_dir(child)
        log_path = directory / LOG_NAME
        with self._lock:
            if self._stopping:
                return None
            directory.mkdir(parents=True, exist_ok=True)
            with open(log_path, "w") as log:
                self._procs[child] = subprocess.Popen(
                    self.command(child), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True,
                )
            self.running.append(child.name)
            self.console.print(f"▶ {escape(child.name)}  started (log: {escape(str(log_path))})  {self._state()}", highlight=False, soft_wrap=True)
            return self._procs[child]

    def _stop_children(self) -> None:
        """Start no further child; SIGTERM to each running one, which ends its own run KILLED
        and keeps its last checkpoint; SIGKILL to any still running ``STOP_TIMEOUT_S`` later."""
        with self._lock:
            self._stopping = True
            self.stopped = dict(self._procs)
        for proc in self.stopped.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.stopped.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):  # it ended just now
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for child in self.stopped:
            self._end_killed(child)

    def _end_killed(self, child: Child) -> None:
        """A stopped child's run KILLED, where the child could not end it itself (killed)."""
        run_id = self._find_run(child)
        if run_id is not None and self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "KILLED")

    def stop_message(self) -> str:
        """What a stop did, in one line: the children it stopped and their logs."""
        done = f"compare stopped with {self.finished}/{len(self.children)} children done"
        if not self.stopped:
            return f"{done}, none running"
        children = ", ".join(f"{c.name} (log: {self.child_dir(c) / LOG_NAME})" for c in self.stopped)
        return (
            f"{done}; stopped the running ones, their MLflow runs KILLED and their last checkpoints kept "
            f"(resume=true on a child continues it): {children}"
        )

    def _state(self) -> str:
        """``[done 2/6; running: a, b]``: where the comparison stands (call under the lock)."""
        running = f"; running: {', '.join(self.running)}" if self.running else ""
        return escape(f"[done {self.finished}/{len(self.children)}{running}]")

    def _find_run(self, child: Child) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id], f"tags.`compare.parent` = '{self.parent_run_id}'", max_results=10000
        )
        found = [r.info.run_id for r in runs if r.info.run_name == child.name]
        return found[0] if found else None

    def _record_failure(self, result: Result, log_path: Path) -> None:
        """The child's run (created here when the child failed before starting one) is
        FAILED with tag ``error`` (the child's own, when it tagged its run); its log is an
        artifact."""
        child = result.child
        if result.run_id is None:
            tags = {"mlflow.parentRunId": self.parent_run_id, **child.tags(self.parent_run_id)}
            run = self.client.create_run(self.experiment_id, run_name=child.name, tags=tags)
            result.run_id = run.info.run_id
            config = self._child_config(child)
            if config is not None:
                self._log_params(result.run_id, config)
        self.client.set_tag(result.run_id, "error", result.error[:ERROR_TAG_LEN])
        self.client.log_artifact(result.run_id, str(log_path))
        if self.client.get_run(result.run_id).info.status != "FAILED":
            self.client.set_terminated(result.run_id, "FAILED")

    def _child_config(self, child: Child) -> dict | None:
        from rlloom.config import load_config
        from rlloom.settings import as_plain, load_settings

        try:
            return as_plain(load_settings(load_config(self.config, self.child_overrides(child))))
        except (RlloomError, OmegaConfBaseException):
            return None

    def _histories(self, run_id: str) -> dict[str, dict[int, float]]:
        return {
            key: {m.step: m.value for m in self.client.get_metric_history(run_id, key)}
            for key in (*PLOTTED, THROUGHPUT)
        }

    # ------------------------------------------------------------------ summary
    def _report(self, results: list[Result]) -> None:
        rows = summarise(results)
        table = rich_table(rows)
        if not self.console.is_terminal:  # a terminal wraps the table to its width; a file gets it whole
            wide = self.console.options.update_width(1000)
            self.console.width = max(self.console.width, self.console.measure(table, options=wide).maximum)
        self.console.print(table)
        with warnings.catch_warnings():  # pandas deprecation noise from inside MLflow's log_table
            warnings.filterwarnings("ignore", message=".*select_dtypes.*")
            self.client.log_table(self.parent_run_id, columns_of(rows), "summary.json")
        summary = markdown_table(rows)
        self.client.log_text(self.parent_run_id, summary, "summary.md")
        self.client.set_tag(self.parent_run_id, "mlflow.note.content", self._description(rows, summary))
        self._log_final_metrics(rows)
        figure = plot_curves(results)
        self.client.log_figure(self.parent_run_id, figure, "plots/curves.png")
        self.client.set_tag(self.parent_run_id, "compare.failed", str(sum(not r.ok for r in results)))
        self.console.print(f"compare: the variants side by side: {self.view_url()}", highlight=False, soft_wrap=True)

    def view_url(self) -> str:
        """This comparison's children side by side in the MLflow UI (``variants_url``)."""
        return variants_url(self.uri, self.experiment_id, self.parent_run_id)

    def _description(self, rows: list[dict[str, Any]], summary: str) -> str:
        """The parent run's description (Markdown): what varied, the winner, the table."""
        what = ", ".join(self.varied) or "seed"
        own = {dict(c.values).get("trainer.max_steps") for c in self.children}
        steps = f"{self.settings.trainer.max_steps} steps" if own == {None} else "the steps each variant sets"
        lines = [
            f"`rlloom compare` of {self.config.name}: {what}; {len(self.children)} runs of {steps} "
            f"([the variants as charts]({self.view_url()})).", "",
        ]
        best = winners(rows, "eval/accuracy")
        if best:
            names = ", ".join(f"**{r['variant']}**" for r in best)
            tie = " (a tie)" if len(best) > 1 else ""
            lines += [f"Best final eval/accuracy: {names} ({best[0]['eval/accuracy']:.3f}){tie}.", ""]
        return "\n".join(lines) + summary

    def _log_final_metrics(self, rows: list[dict[str, Any]]) -> None:
        """Each variant's final values (mean over seeds) as metrics of the parent run,
        ``final/<metric>/<variant>`` (``variant_key``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(f"final/{key}/{variant_key(row['variant'])}", float(row[key]), now, 0)
            for row in rows for key, _, _ in COLUMNS if row[key] is not None
        ]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.parent_run_id, metrics=metrics[i : i + 1000])


def variants_url(uri: str, experiment_id: str, parent_run_id: str) -> str:
    """The experiment's runs page showing a comparison's children alone, best final
    eval/accuracy first, as charts. Filtered and sorted by a metric, MLflow lists the children
    flat (not nested under the parent), and the warm start, not one of them, is left out."""
    from rlloom.tracking import experiment_url

    return experiment_url(
        uri, experiment_id,
        searchFilter=f"tags.`compare.parent` = '{parent_run_id}'",
        orderByKey="metrics.`eval/accuracy`", orderByAsc="false", compareRunsMode="CHART",
    )


def variant_key(variant: str) -> str:
    """A variant's name as MLflow allows in a metric name (letters, digits, ``_-./ ``):
    ``advantage=rloo,policy_loss.eps=0.3`` → ``advantage-rloo policy_loss.eps-0.3``."""
    return re.sub(r"[^\w./ -]", "_", variant.replace("=", "-").replace(",", " "))


def winners(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows with the highest ``key`` (several on a tie; none when no row has it)."""
    scored = [r for r in rows if r[key] is not None]
    best = max((r[key] for r in scored), default=None)
    return [r for r in scored if r[key] == best]


def summarise(results: list[Result]) -> list[dict[str, Any]]:
    """One row per variant (seeds pooled): status, and per column the mean (and sample std
    over seeds when more than one finished) of the finished children."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.child.variant, []).append(r)
    rows = []
    for variant, group in groups.items():
        done = [r for r in group if r.ok]
        failed = [r for r in group if not r.ok]
        if not failed:
            status = "ok"
        elif len(group) == 1 or not done:
            status = "FAILED"
        else:
            status = f"FAILED {len(failed)}/{len(group)}"
        row: dict[str, Any] = {"variant": variant, "status": status, "runs": len(group)}
        for key, _, _ in COLUMNS:
            values = [v for v in (r.final(key) for r in done) if v is not None]
            row[key] = statistics.fmean(values) if values else None
            row[f"{key} std"] = statistics.stdev(values) if len(values) > 1 else None
        row["error"] = failed[0].error[:ERROR_TAG_LEN] if failed else ""
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, decimals: int) -> str:
    value, std = row[key], row[f"{key} std"]
    if value is None:
        return "–"
    text = f"{value:.{decimals}f}"
    return f"{text} ± {std:.{decimals}f}" if std is not None else text


def _errors(rows: list[dict[str, Any]]) -> list[str]:
    """One line per failed variant: its name and (the first line of) its first error."""
    return [f"{row['variant']}: {row['error'].splitlines()[0]}" for row in rows if row["error"]]


def rich_table(rows: list[dict[str, Any]]):
    """The summary as a rich renderable: the table, then the failed variants' errors."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title="compare")
    table.add_column("variant", overflow="fold", min_width=min(30, max((len(r["variant"]) for r in rows), default=7)))
    table.add_column("status", no_wrap=True)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        style = None if row["status"] == "ok" else "red"
        table.add_row(row["variant"], row["status"], *(_cell(row, k, d) for k, _, d in COLUMNS), style=style)
    return Group(table, *(Text(f"✗ {line}", style="red") for line in _errors(rows)))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    headers = ["variant", "status", *(h for _, h, _ in COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["variant"], row["status"], *(_cell(row, k, d) for k, _, d in COLUMNS)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    errors = _errors(rows)
    if errors:
        lines += ["", "Failed:", "", *(f"- {e}" for e in errors)]
    return "\n".join(lines) + "\n"


def columns_of(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Rows → {column: values}, the shape ``MlflowClient.log_table`` takes."""
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def plot_curves(results: list[Result]):
    """reward/mean and eval/accuracy against step, one line per variant: the mean over its
    finished seeds, with a min–max band when there are several."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(12, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(PLOTTED))
    groups: dict[str, list[Result]] = {}
    for r in results:
        if r.ok:
            groups.setdefault(r.child.variant, []).append(r)
    for ax, key in zip(axes, PLOTTED):
        for variant, group in groups.items():
            steps = sorted(set.intersection(*(set(r.history.get(key, {})) for r in group)))
            if not steps:
                continue
            values = [[r.history[key][s] for r in group] for s in steps]
            means = [statistics.fmean(v) for v in values]
            (line,) = ax.plot(steps, means, marker="o" if len(steps) < 20 else None, markersize=3, label=variant)
            if len(group) > 1:
                ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=line.get_color(), alpha=0.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if any(len(g) > 1 for g in groups.values()):
        figure.suptitle("mean over seeds; band: min–max", fontsize="medium")
    handles, labels = axes[0].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[-1].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="small")
    return figure

