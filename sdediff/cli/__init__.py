"""The ``sdediff`` command: one module per group of subcommands, each adding its parsers.

Every user error (bad name, bad number, missing file) is one line on stderr and exit status 2,
never a traceback.
"""

from __future__ import annotations

from ..checks import NumericalError
from . import bench, demo, ode, sample, train
from .common import Parser, fail, parse_options
from .ode import load_examples
from .sample import SAMPLER_COLUMNS, markdown_table, sampler_rows
from .train import PRESETS


def build_parser() -> Parser:
    parser = Parser(prog="sdediff", description="Score-based diffusion through SDEs and ODEs.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    train.add_parser(sub)
    sample.add_parsers(sub)
    demo.add_parser(sub)
    ode.add_parsers(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and status 2, never a traceback.

    ``OSError`` covers every path the user names (missing, a file where a folder is needed,
    unreadable, a full disk): its message carries the path and the reason.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, NumericalError) as err:
        lines = str(err).splitlines()
        return fail(lines[0] if lines else type(err).__name__)
    except KeyboardInterrupt:
        return fail("interrupted")


__all__ = ["PRESETS", "SAMPLER_COLUMNS", "build_parser", "fail", "load_examples", "main",
           "markdown_table", "parse_options", "sampler_rows"]
