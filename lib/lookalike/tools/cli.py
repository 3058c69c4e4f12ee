"""The ``lookalike`` command: tools that read the jobs' tables without starting Spark.

Each subcommand lives in its own module, which provides ``add_arguments(parser)`` and
``command(args) -> int``; modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import TYPE_CHECKING

from lookalike.errors import LookalikeError

if TYPE_CHECKING:
    from lookalike.config import Config

SUBCOMMANDS = {
    "similar": ("lookalike.tools.query", "print one item's recommendations from the neighbour table"),
    "report": ("lookalike.tools.report", "write a self-contained HTML page of items and their neighbours"),
    "evaluate": (
        "lookalike.tools.evaluate",
        "precision/recall/mAP@k of the neighbour table against labels, or recall@k of held-out co-interactions",
    ),
}


def load_settings(args) -> Config:
    """--config (and --set) plus --s3-endpoint-url: the same S3 and input limits as the jobs.
    Here rather than in a subcommand's module so that ``similar`` imports no image code."""
    from lookalike.config import load_config, replace

    cfg = load_config(args.config, getattr(args, "overrides", None) or [])
    if getattr(args, "s3_endpoint_url", None):
        cfg = replace(cfg, s3={"endpoint_url": args.s3_endpoint_url})
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="lookalike", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).add_arguments(sub_parser)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return importlib.import_module(SUBCOMMANDS[args.command][0]).command(args)
    except LookalikeError as exc:
        print(f"lookalike {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
