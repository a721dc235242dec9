"""The ``sdediff`` command: one module per group of subcommands, each adding its parsers.

Every user error (bad name, bad number, missing file) is one line on stderr and exit status 2,
never a traceback. An exception that no input check raised is a bug: it keeps its traceback (and
exit status 1), so that it can be reported. ``SDEDIFF_TRACEBACK=1`` shows the traceback of every
error.
"""

from __future__ import annotations

import os
import sys
import warnings

from ..checks import InputError, NumericalError
from ..distributed import RankLost, leave
from . import bench, classifier, demo, export, inpaint, ode, sample, train
from .common import Parser, fail, parse_options
from .ode import load_examples
from .sample import SAMPLER_COLUMNS, markdown_table, sampler_rows
from .train import PRESETS


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="sdediff", description="Score-based diffusion through SDEs and ODEs.")
    parser.add_argument("--version", action="version", version=f"sdediff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(sub)
    classifier.add_parser(sub)
    sample.add_parsers(sub)
    demo.add_parser(sub)
    ode.add_parsers(sub)
    bench.add_parser(sub)
    export.add_parser(sub)
    inpaint.add_parser(sub)
    return parser


#: Errors about what the user asked for: one line and exit 2. ``OSError`` covers every path the
#: user names (missing, a file where a folder is needed, unreadable, a full disk): its message
#: carries the path and the reason. ``NumericalError`` carries advice on what to change.
USER_ERRORS = (InputError, OSError, NumericalError)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the command's one line on stderr (``sdediff: warning: ...``), not Python's
    ``file:line: Category: ...`` with the source line under it; rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(f"sdediff: warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and status 2, a bug a traceback."""
    import matplotlib

    matplotlib.use("Agg")   # the command writes files only; a library import never does this
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("SDEDIFF_TRACEBACK", "") not in ("", "0"):
            raise
        # Under torchrun every rank meets the same input error: rank 0 reports it, once. A lost
        # rank is news to each survivor. Printed before leaving the group: torchrun stops the
        # job as soon as one rank has exited.
        lines = str(err).splitlines()
        return fail(lines[0] if lines else type(err).__name__, every_rank=isinstance(err, RankLost))
    except KeyboardInterrupt:        # 128 + SIGINT, as a shell reports it
        fail("interrupted")
        return 130
    finally:
        leave()


__all__ = ["PRESETS", "SAMPLER_COLUMNS", "build_parser", "fail", "load_examples", "main",
           "markdown_table", "parse_options", "sampler_rows"]
