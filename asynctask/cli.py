"""The `asynctask` command line: serve a task, and submit to, watch and list a running one.

Exit codes of the client commands: 0 done; 1 the task ended failed or cancelled (`wait`);
2 `wait` timed out (argparse also exits 2 on a usage error); 3 the request failed (refused
by the service, or the service could not be reached).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client

EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, EXIT_REQUEST = 1, 2, 2, 3
BAR_WIDTH = 20


def _serve(args: argparse.Namespace) -> int:
    from .serving import serve

    serve(args.target, bind=args.bind, workers=args.workers, endpoint=args.endpoint,
          preload=args.preload, grace=args.grace)
    return 0


def parse_value(text: str) -> Any:
    """A `k=v` value: JSON when it parses (`3`, `true`, `["a"]`), else the text itself."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; the service would refuse them, so keep them as text.
    raise ValueError(name)


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """`["text=a b", "top=3"]` -> `{"text": "a b", "top": 3}`; `task_id` always stays a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        if key in params:
            raise ValueError(f"{key!r} is given twice")
        params[key] = value if key == "task_id" else parse_value(value)
    return params


def render_progress(view: dict[str, Any], columns: int = 80) -> str:
    """One line for a task's view: a bar from `progress.percent` when there is one, else the status."""
    status = str(view.get("status", "?"))
    progress = view.get("progress") if isinstance(view.get("progress"), dict) else {}
    percent, message = progress.get("percent"), progress.get("message")
    line = status
    if isinstance(percent, (int, float)) and not isinstance(percent, bool) and math.isfinite(percent):
        percent = min(max(float(percent), 0.0), 100.0)
        filled = round(BAR_WIDTH * percent / 100)
        line = f"{status} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3.0f}%"
    if message:
        line += " " + " ".join(str(message).split())  # a multi-line message would break the one line
    return line[: max(columns - 1, 0)]


def _client(args: argparse.Namespace) -> Client:
    from .client import Client

    token = args.token if args.token is not None else os.environ.get("ASYNCTASK_API_TOKEN")
    return Client(args.url, token, endpoint=args.endpoint)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _request_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a refused or failed request into a message on stderr and exit code 3."""

    def handler(args: argparse.Namespace) -> int:
        import requests

        from .errors import AsyncTaskError

        try:
            return run(args)
        except (AsyncTaskError, requests.RequestException) as exc:
            print(f"asynctask {args.command}: {exc}", file=sys.stderr)
            return EXIT_REQUEST

    return handler


def _submit(args: argparse.Namespace) -> int:
    try:
        params = parse_params(args.params)
    except ValueError as exc:
        print(f"asynctask submit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with _client(args) as client:
        print(client.submit(**params))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.get(args.task_id))
    return 0


def _wait(args: argparse.Namespace) -> int:
    from .errors import TaskCancelled, TaskFailed

    shown = sys.stderr.isatty()
    columns = shutil.get_terminal_size().columns

    def show(view: dict[str, Any]) -> None:
        sys.stderr.write("\r\x1b[K" + render_progress(view, columns))
        sys.stderr.flush()

    try:
        with _client(args) as client:
            result = client.wait(args.task_id, args.timeout, on_update=show if shown else None)
    except TaskFailed as exc:
        code, message = EXIT_FAILED, exc.error or str(exc)
    except TaskCancelled as exc:
        code, message = EXIT_FAILED, str(exc)
    except TimeoutError as exc:
        code, message = EXIT_TIMEOUT, str(exc)
    except KeyboardInterrupt:
        code, message = 130, "interrupted"
    else:
        code, message = 0, ""
    finally:
        if shown:
            sys.stderr.write("\r\x1b[K")
    if code:
        print(message, file=sys.stderr)
    else:
        _print_json(result)
    return code


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.cancel(args.task_id))
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_json(client.list(args.status, limit=args.limit, skip=args.skip))
    return 0


def _client_parser(commands: Any, name: str, summary: str,
                   run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """A subcommand that talks to a running service at URL."""
    command = commands.add_parser(name, help=summary)
    command.add_argument("url", help="the service's base URL, e.g. http://127.0.0.1:8000")
    command.add_argument("--endpoint", default="/api", help="where the task's routes are (/api)")
    command.add_argument("--token", default=None, help="API token (default: $ASYNCTASK_API_TOKEN)")
    command.set_defaults(handler=_request_command(run))
    return command


def parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    root = argparse.ArgumentParser(
        prog="asynctask", description="Serve and use asynctask services.",
        epilog="exit codes: 0 done; 1 task failed or cancelled (wait); 2 timeout (wait) or usage "
               "error; 3 request refused or service unreachable",
    )
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

    submit = _client_parser(commands, "submit", "submit a task; prints its id", _submit)
    submit.add_argument("params", nargs="*", metavar="KEY=VALUE",
                        help="a param; VALUE is JSON when it parses (top=3, tags='[\"a\"]'), else text")
    status = _client_parser(commands, "status", "print a task's view as JSON", _status)
    status.add_argument("task_id")
    wait = _client_parser(commands, "wait", "wait for a task and print its result as JSON", _wait)
    wait.add_argument("task_id")
    wait.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 2)")
    cancel = _client_parser(commands, "cancel", "cancel a queued or running task", _cancel)
    cancel.add_argument("task_id")
    tasks = _client_parser(commands, "list", "list tasks, newest first, as JSON", _list)
    tasks.add_argument("--status", default=None, help="only tasks with this status")
    tasks.add_argument("--limit", type=int, default=50)
    tasks.add_argument("--skip", type=int, default=0)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `asynctask` command."""
    root = parser()
    args, extra = root.parse_known_args(argv)
    # argparse ends a `*` positional at the first option, so `submit URL --token T k=v` leaves
    # `k=v` over; such pairs are params too.
    if extra and (args.command != "submit" or any(arg.startswith("-") for arg in extra)):
        root.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.params = [*args.params, *extra]
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (`asynctask status ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
