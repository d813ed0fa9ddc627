"""The `asynctask` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    from .serving import serve

    serve(args.target, bind=args.bind, workers=args.workers, endpoint=args.endpoint,
          preload=args.preload, grace=args.grace)
    return 0


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    root = argparse.ArgumentParser(prog="asynctask", description="Serve and use asynctask services.")
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run MODULE:OBJ under gunicorn")
    serve.add_argument("target", help="MODULE:OBJ, an AsyncTask instance or a Flask app")
    serve.add_argument("--bind", "-b", default="127.0.0.1:8000")
    serve.add_argument("--workers", "-w", type=int, default=1)
    serve.add_argument("--endpoint", default="/api", help="where an AsyncTask's routes go")
    serve.add_argument("--preload", action="store_true", help="load the app before forking workers")
    serve.add_argument("--grace", type=float, default=None,
                       help="seconds running tasks get on SIGTERM before they are released (20)")
    serve.set_defaults(handler=_serve)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `asynctask` command."""
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
