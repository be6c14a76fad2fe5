"""The rlloom command line: list, show, presets, validate, train, compare.

Errors caused by input print one message to stderr and exit with status 2; any other failure
prints one line and exits with status 1 (``--traceback`` or ``RLLOOM_DEBUG=1`` adds the full
traceback). SIGTERM (and SIGHUP, a closed terminal) ends a run as Ctrl-C does: the MLflow
run is KILLED, the last checkpoint stays, exit status 128 + the signal (130 for Ctrl-C);
``rlloom compare`` stops its running children so, and says which. When the reader of the
output goes away (``rlloom list | head -1``) the command stops quietly with status 1, as
Python itself and rich do on a closed pipe.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import sys
import traceback
from typing import Any

from rlloom.errors import RlloomError, one_line
from rlloom.stopping import Terminated, install as install_signal_handlers


def _cmd_list(args: argparse.Namespace) -> int:
    from rlloom.registry import get_registry

    registry = get_registry()
    entries = registry.entries(args.kind)
    if args.json:
        rows = [_entry_row(e, registry) for e in entries]
        rows += [{"kind": None, "name": None, "plugin": p.name, "package": p.package, "version": p.version,
                  "summary": "", "error": p.error} for p in registry.failed]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("kind", "name", "plugin", "summary", box=None, pad_edge=False)
    for e in entries:
        table.add_row(e.kind, e.name, e.plugin, f"[red]error:[/] {escape(e.error)}" if e.error else escape(e.summary))
    console = Console(width=200)
    console.print(table)
    for p in registry.failed:
        console.print(f"[red]not loaded:[/] {escape(p.error)}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from rlloom.describe import REQUIRED, describe
    from rlloom.registry import get_registry

    d = describe(get_registry(), args.kind, args.name)
    if args.json:
        print(json.dumps(d.as_dict(), indent=2, default=repr, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    package = f" ({d.package} {d.version})" if d.package else ""
    print(f"{d.kind} {d.name}: from plugin {d.plugin}{package}")
    print(f"call: {d.call}\n")
    table = Table("parameter", "type", "default", "meaning", box=None, pad_edge=False)
    for p in d.parameters:
        default = "required" if p.default is REQUIRED else repr(p.default)
        name = f"{p.name} (engine)" if p.engine else p.name
        table.add_row(name, escape(p.type), escape(default), escape(p.meaning))
    console = Console(width=shutil.get_terminal_size((120, 24)).columns)
    with console.capture() as captured:
        console.print(table if d.parameters else "no parameters")
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))
    print(f"\n{d.docstring}")
    return 0


def _entry_row(entry: Any, registry: Any) -> dict[str, Any]:
    plugin = registry.plugin(entry.plugin)
    return {"kind": entry.kind, "name": entry.name, "plugin": entry.plugin, "package": plugin.package,
            "version": plugin.version, "summary": entry.summary, "error": entry.error}


def _warn_not_loaded(cfg) -> None:
    """One warning line per plugin that failed to load (a run that uses none of it goes on)."""
    from rlloom.config import disabled_plugins
    from rlloom.registry import get_registry

    for plugin in get_registry(disabled_plugins(cfg)).failed:
        print(f"rlloom: warning: not loaded: {plugin.error}", file=sys.stderr)


def _cmd_presets(args: argparse.Namespace) -> int:
    from rlloom.config import presets

    found = presets()
    if args.json:
        print(json.dumps([{"name": p.name, "description": p.description} for p in found], indent=2))
        return 0
    width = max(len(p.name) for p in found)
    for p in found:
        print(f"{p.name:<{width}}  {p.description}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from rlloom.config import load_config, validate_config

    cfg = load_config(args.config, args.overrides)
    _warn_not_loaded(cfg)
    specs = validate_config(cfg)
    print(f"{args.config}: ok ({len(specs)} components)")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rlloom.config import load_config
    from rlloom.engine import run

    cfg = load_config(args.config, args.overrides)
    if int(os.environ.get("RANK", "0")) == 0:
        _warn_not_loaded(cfg)
    metrics = run(cfg)
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "reward/mean"))}
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {shown}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rlloom.compare import Comparison

    return Comparison(
        args.config, args.vary, args.overrides, args.steps, args.seeds, args.parallel, args.variant
    ).run()


CONFIG_HELP = "a preset name (grpo; see `rlloom presets`) or the path of a YAML config"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--traceback", action="store_true", help="on an error, print the full traceback too (or set RLLOOM_DEBUG=1)"
    )
    parser = argparse.ArgumentParser(prog="rlloom", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", parents=[common], help="what is registered, by whom, one line each")
    p.add_argument("kind", nargs="?", help="only this kind (advantage, policy_loss, ...)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("show", parents=[common], help="a component's parameters (type, default, meaning), plugin and docstring")
    p.add_argument("kind", help="its kind (advantage, policy_loss, ...; see `rlloom list`)")
    p.add_argument("name", help="its registered name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("presets", parents=[common], help="the presets shipped with rlloom, one line each")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("validate", parents=[common], help="check component names and parameters without building")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("train", parents=[common], help="run a pipeline")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compare", parents=[common], help="variants of a pipeline as MLflow child runs under one parent run")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2", help="values of one key (repeatable)")
    p.add_argument(
        "--variant", action="append", default=[], metavar="'NAME: K=V K=V'",
        help="a named set of values that go together (repeatable; crossed with --vary)",
    )
    p.add_argument("--steps", type=int, help="trainer.max_steps of every variant (a --variant may set its own)")
    p.add_argument("--seeds", type=int, help="run every variant with seeds 0..K-1")
    p.add_argument("--parallel", type=int, default=1, metavar="P", help="children run at once (default 1)")
    p.set_defaults(func=_cmd_compare)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal for rlloom's own progress: no per-file progress bars or INFO logs
    (MLflow's, such as creating its database tables on a first run, included; the setting
    reaches ``rlloom compare``'s children through the environment)."""
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is imported
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (a BrokenPipeError is then stdout's,
    not, say, a socket's). Where poll() is missing, any BrokenPipeError counts as stdout's."""
    if not hasattr(select, "poll"):
        return True
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # not a file (stdout replaced in-process)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _quiet_exit_on_closed_stdout() -> int:
    """Stdout's reader has gone: send what is still buffered to devnull, so that nothing fails
    again when Python flushes stdout on exit; status 1."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow options (``compare CONFIG --vary a=1,2 x=1``)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command in ("train", "compare"):
        _quiet_libraries()
        install_signal_handlers()
    show_traceback = args.traceback or os.environ.get("RLLOOM_DEBUG") == "1"
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not while Python exits
        return code
    except BrokenPipeError as exc:
        if _stdout_closed():
            return _quiet_exit_on_closed_stdout()
        return _report(exc, show_traceback)
    except KeyboardInterrupt as exc:
        print(_stopped_line(exc), file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Terminated) else 130
    except Exception as exc:
        return _report(exc, show_traceback)


def _stopped_line(exc: KeyboardInterrupt) -> str:
    """``rlloom: terminated (SIGTERM); ...`` or ``rlloom: interrupted``, followed by what the
    command says it stopped (``rlloom compare``: its children), when it says."""
    said = str(exc)
    if isinstance(exc, Terminated):
        name = signal.Signals(exc.signum).name
        return f"rlloom: terminated ({name}); {said or 'the last checkpoint is kept, resume=true continues from it'}"
    return f"rlloom: interrupted; {said}" if said else "rlloom: interrupted"


def _report(exc: Exception, show_traceback: bool) -> int:
    """One ``rlloom: error:`` line on stderr (after the traceback when asked for); the exit status."""
    if show_traceback:
        traceback.print_exc()
    if isinstance(exc, RlloomError):
        print(f"rlloom: error: {exc}", file=sys.stderr)
        return exc.exit_code
    hint = "" if show_traceback else " (--traceback shows where)"
    print(f"rlloom: error: {one_line(exc)}{hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
