"""The ``vesselrecon`` command line.

Each method package may provide ``VesselReconLib.<method>.cli`` with any of these hooks:

- ``add_arguments(parser)`` and ``run(args) -> int`` for ``vesselrecon <method> ...``;
- ``add_train_arguments(parser)`` and ``train(args) -> int`` for ``vesselrecon train <method>``;
- ``add_eval_arguments(parser)`` and ``evaluate(args) -> int`` for ``vesselrecon eval <method>``;
- ``add_bench_arguments(parser)`` and ``bench(args) -> int`` for ``vesselrecon bench <method>``;
- ``demo(context: DemoContext) -> None``: adds the method's part to ``vesselrecon demo``.

Exit codes: 0 success; 1 internal error (the traceback is shown with ``--debug``); 2 bad input
(files, parameters, device) or a batch in which some inputs failed; 3 bad checkpoint or invalid
network output; 130 interrupted or cancelled; 143 (128 + 15) terminated by SIGTERM, which a command takes as it
takes Ctrl-C (:func:`sigterm_as_interrupt`). Every expected error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from types import ModuleType

from . import METHODS, __version__

HOOKS = {"run": "add_arguments", "train": "add_train_arguments", "evaluate": "add_eval_arguments",
         "bench": "add_bench_arguments"}


def method_cli(method: str) -> ModuleType | None:
    """The method's CLI module, or ``None`` when it has none yet."""
    try:
        return importlib.import_module(f"{__package__}.{method}.cli")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith(f"{__package__}.{method}"):
            return None
        raise


def _add_method_parsers(subparsers, hook: str, help_fmt: str) -> None:
    for method in METHODS:
        module = method_cli(method)
        if module is None or not hasattr(module, hook):
            continue
        parser = subparsers.add_parser(method, help=help_fmt.format(method=method))
        getattr(module, HOOKS[hook])(parser)
        parser.set_defaults(func=getattr(module, hook))


def _add_group(subparsers, name: str, hook: str, help_text: str, help_fmt: str) -> None:
    group = subparsers.add_parser(name, help=help_text)
    inner = group.add_subparsers(dest="method", metavar="METHOD")
    inner.required = True
    _add_method_parsers(inner, hook, help_fmt)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vesselrecon", description="VesselRecon: vascular 3D reconstruction.")
    parser.add_argument("--version", action="version", version=f"vesselrecon {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_models_parser(sub)
    _add_demo_parser(sub)
    _add_phantoms_parser(sub)
    _add_group(sub, "train", "train", "train a method's network", "train {method} on a dataset folder")
    _add_group(sub, "eval", "evaluate", "print a method's results table on held-out data",
               "evaluate {method} against its baselines")
    _add_group(sub, "bench", "bench", "time a method against its plain baseline (JSON line)",
               "benchmark {method}")
    _add_method_parsers(sub, "run", "run {method} on input files")
    return parser


def _add_models_parser(sub) -> None:
    parser = sub.add_parser("models", help="list shipped models with checksums and status")
    parser.add_argument("--registry", help="registry folder (default: the installed one)")
    parser.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    """Print the registry: name, module, preset, sha256 prefix and status (never crashes on bad files)."""
    from . import registry

    from pathlib import Path

    if args.registry and not Path(args.registry).is_dir():
        print(f"error: registry folder {args.registry} does not exist or is not a folder.", file=sys.stderr)
        return 2
    try:
        entries = registry.load_registry(args.registry)
    except (registry.RegistryError, ValueError) as exc:
        print(f"error: invalid registry: {exc}", file=sys.stderr)
        return 2
    if not entries:
        print("No models in the registry.")
        return 0
    print(f"{'name':28} {'module':10} {'preset':14} {'sha256':14} status")
    worst = 0
    for entry in entries:
        status = entry.status()
        worst = max(worst, 0 if status == "ok" else 1)
        print(f"{entry.name:28} {entry.module:10} {entry.preset:14} {entry.sha256[:12]:14} {status}")
    return worst


def _add_demo_parser(sub) -> None:
    parser = sub.add_parser("demo", help="run every module on bundled phantoms; write a .mrb scene and PNG renders")
    parser.add_argument("--out", default="out/demo", help="output folder")
    parser.add_argument("--device", default="auto", help="auto|cuda|mps|cpu")
    parser.add_argument("--only", nargs="*", choices=METHODS, help="run only these methods")
    parser.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, device=args.device, only=args.only)
    return 0


def _add_phantoms_parser(sub) -> None:
    parser = sub.add_parser("phantoms", help="write a synthetic dataset in a public dataset's layout")
    parser.add_argument("kind", help="octa | octa-quality | xray | mra | swi | ct, 'gallery' for the README pictures, "
                        "or 'realism' to compare OCTA phantoms with real scans (--real)")
    parser.add_argument("--count", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (required except for realism)")
    parser.add_argument("--side-by-side", type=float, default=0.0,
                        help="xray: fraction of cases with one more tube running beside the SOI in one view "
                        "(overlapping it side by side; in the image, not in the SOI label)")
    parser.add_argument("--lesion-range", type=float, nargs=2, metavar=("LO", "HI"),
                        help="xray: the SOI lesions' %% diameter stenosis range (default 30 90; for example 0 30 for "
                        "lesion-free and mild vessels)")
    parser.add_argument("--real", action="append", help="realism: folder of real en face OCTA scans "
                        "(ROSSA layout image/ + label/, or plain images); repeatable")
    parser.add_argument("--size-px", type=int, default=320, help="realism: phantom size")
    parser.add_argument("--field-mm", type=float, nargs="+", default=[3.0, 6.0], help="realism: phantom fields (one batch each)")
    parser.add_argument("--limit", type=int, default=100, help="realism: real scans per folder (seeded random subset)")
    parser.set_defaults(func=cmd_phantoms)


def cmd_phantoms(args) -> int:
    from pathlib import Path

    from .phantoms.datasets import write_dataset
    from .progress import TqdmProgress

    if args.kind == "realism":
        from .phantoms.realism import run_realism

        return run_realism(args)
    if not args.out:
        from .errors import InputError

        raise InputError(f"phantoms {args.kind} needs --out FOLDER.")
    from .errors import InputError, check_number

    check_number(args.count, "--count", 1, 1_000_000, integer=True)
    check_number(args.side_by_side, "--side-by-side", 0.0, 1.0)
    if (args.side_by_side or args.lesion_range) and args.kind != "xray":
        raise InputError("--side-by-side and --lesion-range apply to xray phantoms only.")
    if args.lesion_range:
        low, high = args.lesion_range
        hint = "Give LO HI in % diameter stenosis, 0 <= LO <= HI < 100."
        check_number(low, "--lesion-range LO", 0.0, 100.0, high_open=True, hint=hint)
        check_number(high, "--lesion-range HI", low, 100.0, high_open=True, hint=hint)
    if args.kind == "gallery":
        from .phantoms.gallery import write_gallery

        for path in write_gallery(args.out, seed=args.seed):
            print(f"Wrote {path}")
        return 0
    bar = TqdmProgress(f"phantoms {args.kind}")
    try:
        options = {"side_by_side": args.side_by_side} if args.side_by_side else {}
        if args.lesion_range:
            options["lesion_range"] = tuple(args.lesion_range)
        path = write_dataset(args.kind, Path(args.out), args.count, args.seed, progress=bar, **options)
    except KeyError as exc:  # an unknown kind
        raise InputError(str(exc).strip("'\"")) from None
    finally:
        bar.close()
    print(f"Wrote {args.count} {args.kind} cases to {path}")
    return 0


class WarningPrefix(logging.Formatter):
    """Log lines as plain messages; warnings and errors start with ``warning:`` / ``error:`` like the CLI's own."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    stderr = logging.StreamHandler()
    stderr.setFormatter(WarningPrefix("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[stderr])  # none if set up
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from contextlib import nullcontext

    from tqdm.contrib.logging import logging_redirect_tqdm

    # a warning gets a line of its own, never one inside a progress bar; without a console handler (e.g. under
    # pytest, which captures logging) nothing is redirected and no handler is added
    console = any(isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr)
                  for h in logging.root.handlers)
    with logging_redirect_tqdm() if console else nullcontext():
        return run_command(args)


EXIT_INTERNAL, EXIT_INPUT, EXIT_CHECKPOINT, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command: raised on the main thread as Ctrl-C raises ``KeyboardInterrupt``, so every
    ``finally`` (staging folders, temporary files, scene transactions) runs."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM (a batch scheduler, ``timeout``, ``kill``) raises :class:`Terminated`; the
    previous handler is put back afterwards. A later SIGTERM is ignored while the first one's clean-up runs, and a
    forked worker process ends as plain SIGTERM would end it. For the command line only: library code called from
    Slicer never installs signal handlers. Nothing changes off the main thread or when SIGTERM is ignored."""
    import os
    import signal
    import threading

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return
    owner, raised = os.getpid(), []

    def handler(signum, frame):
        if os.getpid() != owner:   # a forked child inherited this handler
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        elif not raised:
            raised.append(signum)
            raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__


def finite_json(data, indent: int | None = None) -> str:
    """``data`` as strict JSON: a non-finite float (NaN, inf: "not measured") is written as ``null``, which every JSON
    reader accepts (Python's default ``NaN`` is not JSON)."""
    import json
    import math

    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(data), indent=indent, allow_nan=False)


def json_report(path, indent: int = 1):
    """The writer of an eval's ``--json`` report: the path's folder is checked now (a bad path is refused
    before minutes of work) and made when the report is written; without a path, a writer that does nothing."""
    from pathlib import Path

    from . import atomic

    if not path:
        return lambda data: None
    atomic.check_output_folder(Path(path).parent)
    return lambda data: atomic.write_text(path, finite_json(data, indent=indent))


def file_error(name: str, message) -> str:
    """The ``error: ...`` line about one input file of a batch, naming the file once."""
    from .errors import file_reason

    return f"error: {file_reason(name, message)}"


def run_command(args) -> int:
    """Run ``args.func`` and turn every failure into a one-line message and an exit code."""
    import traceback

    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last line of defence of the command line
        from .progress import close_bars

        close_bars()
        code, message = classify(exc)
        if getattr(args, "debug", False) and code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):
            traceback.print_exception(exc)
        print(f"error: {message}", file=sys.stderr)
        return code


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and one-line message for an exception that ended a command."""
    from .errors import CheckpointError, InferenceError, InputError
    from .progress import Cancelled

    if isinstance(exc, (CheckpointError, InferenceError)):
        return EXIT_CHECKPOINT, _one_line(exc)
    if isinstance(exc, InputError):
        return EXIT_INPUT, _one_line(exc)
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED, "terminated (SIGTERM): no partial output was left under a final file name"
    if isinstance(exc, (KeyboardInterrupt, Cancelled)):
        return EXIT_INTERRUPTED, "interrupted: no partial output was left under a final file name"
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError)):
        return EXIT_INPUT, f"{exc.strerror or exc.__class__.__name__}: {exc.filename or _one_line(exc)}"
    if _is_yaml_error(exc):
        return EXIT_INPUT, f"invalid YAML: {_one_line(exc)}"
    return EXIT_INTERNAL, (f"internal error ({exc.__class__.__name__}: {_one_line(exc)[:300]}); "
                           "run again with --debug for the traceback and report it")


def _is_yaml_error(exc: BaseException) -> bool:
    try:
        import yaml
    except ImportError:
        return False
    return isinstance(exc, yaml.YAMLError)


if __name__ == "__main__":
    sys.exit(main())
