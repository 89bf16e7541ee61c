"""`specstop` command line: one argparse parser, one module per command group, one small handler per command.

Handlers import their heavy parts (torch and transformers ~2 s, polars ~0.2 s, matplotlib ~0.3 s) inside the
handler, so `specstop --help` and a refused flag answer at once; everything else is imported at the top.
"""
from __future__ import annotations

import sys

from pipeline.cli import bench, chaos, gateway, offline, preflight, runs, topology, workers
from pipeline.cli.args import OneLineParser
from pipeline.errors import USER_ERRORS


def _version() -> str:
    """The installed distribution's version, so `--version` cannot drift from pyproject.toml."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("specstop")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="specstop", description="Delay-adaptive speculative decoding, edge to cloud.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the installed package's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (offline, workers, gateway, runs, bench, chaos, topology):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from pipeline.transport import auth

        auth.configure(auth.ConnectAuth.from_sources(vars(args)))  # flags, else SPECSTOP_NATS_* variables
        if hasattr(args, "log_level"):  # a worker: its console's level and format (pipeline/logs.py)
            from pipeline import logs

            logs.set_console(args.log_level, args.log_format)
        preflight.check_args(args)  # broker URL and profile, before a handler loads anything
        args.func(args)
    except USER_ERRORS as exc:
        print(f"specstop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head`
        return 0
    return 0
