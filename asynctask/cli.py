"""The `asynctask` command line: serve a task, run workers, and submit to, watch and list tasks.

Exit codes of the client commands: 0 done; 1 the task ended failed or cancelled (`wait`);
2 `wait` timed out, or a usage error; 3 the request failed (refused by the service, or the
service could not be reached). `worker` exits with the code `run_worker` returns.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .client import Client

EXIT_FAILED, EXIT_TIMEOUT, EXIT_USAGE, EXIT_REQUEST = 1, 2, 2, 3
BAR_WIDTH = 20
EPILOG = (
    "Exit codes: 0 done; 1 task failed or cancelled (wait); 2 timeout (wait) or usage error; "
    "3 request refused or service unreachable."
)


# -- k=v params ---------------------------------------------------------------------------------

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
    given = view.get("progress")
    progress: dict[str, Any] = given if isinstance(given, dict) else {}
    percent, message = progress.get("percent"), progress.get("message")
    line = status
    if isinstance(percent, (int, float)) and not isinstance(percent, bool) and math.isfinite(percent):
        percent = min(max(float(percent), 0.0), 100.0)
        filled = round(BAR_WIDTH * percent / 100)
        line = f"{status} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3.0f}%"
    if message:
        line += " " + " ".join(str(message).split())  # a multi-line message would break the one line
    return line[: max(columns - 1, 0)]


# -- plumbing of the client commands ------------------------------------------------------------

def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _client(url: str, token: str | None, endpoint: str | None) -> Client:
    from .client import Client

    return Client(url, token, endpoint=endpoint)


def _client_command(name: str, summary: str, group: click.Group | None = None,
                    check: Callable[[dict[str, Any]], object] = lambda kwargs: None,
                    ) -> Callable[[Callable[..., int]], click.Command]:
    """A subcommand (of `group`, default the top level) that talks to a running service at URL.

    It gets a `client` instead of URL/--endpoint/--token; `check` vets its other arguments
    first; a refused or failed request becomes a message on stderr and exit code 3.
    """

    def decorate(run: Callable[..., int]) -> click.Command:
        @functools.wraps(run)
        def command(url: str, endpoint: str | None, token: str | None, **kwargs: Any) -> int:
            import requests

            from .errors import AsyncTaskError

            try:
                check(kwargs)
                with _client(url, token, endpoint) as client:
                    return run(client, **kwargs)
            except (AsyncTaskError, requests.RequestException, ValueError) as exc:
                prefix = f"{group.name} " if group is not None else ""
                print(f"asynctask {prefix}{name}: {exc}", file=sys.stderr)
                return EXIT_REQUEST

        command = click.option("--token", default=None, envvar="ASYNCTASK_API_TOKEN", show_envvar=True,
                               help="API token sent as a bearer token.")(command)
        command = click.option("--endpoint", default=None,
                               help="Path of the task's routes under URL (default: URL's own path, else /api).")(command)
        command = click.argument("url")(command)
        return (group or cli).command(name, help=run.__doc__ or summary, short_help=summary, epilog=EPILOG)(command)

    return decorate


# -- the commands -------------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
def cli() -> None:
    """Serve and use asynctask services.

    URL is the service's base URL (http://127.0.0.1:8000, the task at /api) or the task
    endpoint's own URL (http://127.0.0.1:8000/jobs).
    """


@cli.command("serve", epilog=EPILOG)
@click.argument("target", metavar="MODULE:OBJ")
@click.option("--bind", "-b", default="127.0.0.1:8000", show_default=True, help="Address to listen on.")
@click.option("--workers", "-w", type=click.IntRange(min=1), default=1, show_default=True,
              help="gunicorn worker processes.")
@click.option("--endpoint", default="/api", show_default=True, help="Where an AsyncTask's routes go.")
@click.option("--preload", is_flag=True, help="Load the app before forking workers.")
@click.option("--grace", type=float, default=None,
              help="Seconds running tasks get on SIGTERM before they are released (20).")
@click.option("--no-worker", is_flag=True, help="Serve the HTTP API only; run no task here.")
def serve_command(target: str, bind: str, workers: int, endpoint: str, preload: bool, grace: float | None,
                  no_worker: bool) -> int:
    """Run MODULE:OBJ (an AsyncTask instance or a Flask app) under gunicorn."""
    from .serving import serve

    serve(target, bind=bind, workers=workers, endpoint=endpoint, preload=preload, grace=grace,
          worker=not no_worker)
    return 0


@cli.command("worker", epilog=EPILOG)
@click.argument("targets", metavar="MODULE:OBJ...", nargs=-1, required=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Tasks run at once (default: each task's max_worker).")
@click.option("--grace", type=click.FloatRange(min=0), default=20.0, show_default=True,
              help="Seconds running tasks get on SIGTERM before they are released.")
@click.option("--url", default=None,
              help="A remote worker: reach the service at this URL over HTTP, never the database.")
@click.option("--token", envvar="ASYNCTASK_WORKER_TOKEN", default=None,
              help="The service's worker token (default: ASYNCTASK_WORKER_TOKEN).")
def worker_command(targets: tuple[str, ...], concurrency: int | None, grace: float, url: str | None,
                   token: str | None) -> int:
    """Run the queued tasks of each MODULE:OBJ (an AsyncTask), without an HTTP API."""
    from .worker_command import run_worker

    if url is None:
        return run_worker(list(targets), concurrency=concurrency or None, grace=grace)
    return run_worker(list(targets), concurrency=concurrency or None, grace=grace, url=url, token=token)


@cli.command("migrate", epilog=EPILOG)
@click.argument("targets", metavar="MODULE:OBJ...", nargs=-1, required=True)
def migrate_command(targets: tuple[str, ...]) -> int:
    """Adopt the tasks asynctask 0.1 stored as tasks of each MODULE:OBJ's type (workers also do
    it when they start); prints how many."""
    from .instances import autostart
    from .worker_command import load_tasks

    with autostart(False):
        tasks = load_tasks(targets)
    for task in tasks:
        click.echo(f"{task.name}: {task.migrate()} task(s) adopted")
        task.shutdown()
    return 0


@_client_command("submit", "Submit a task; prints its id.")
@click.argument("params", metavar="[KEY=VALUE]...", nargs=-1)
@click.option("--priority", type=click.IntRange(-100, 100), default=None,
              help="-100 to 100 (default 0); higher runs first.")
@click.option("--delay", type=float, default=None, help="Run it no sooner than this many seconds from now.")
@click.option("--run-at", default=None, help="Run it no sooner than this ISO 8601 time, with a time zone.")
def submit(client: Client, params: tuple[str, ...], priority: int | None, delay: float | None,
           run_at: str | None) -> int:
    """Submit a task; prints its id.

    Each KEY=VALUE is a param; VALUE is JSON when it parses (top=3, tags='["a"]'), else text.
    """
    from .errors import InvalidParams
    from .validation import queue_options

    try:
        values = parse_params(params)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY=VALUE") from None
    try:  # a usage error (exit 2), not a refused request: the service would refuse them anyway
        queue_options(priority, delay, run_at)
    except InvalidParams as exc:
        raise click.UsageError(str(exc)) from None
    print(client.enqueue(values, priority=priority, delay=delay, run_at=run_at))
    return 0


@_client_command("status", "Print a task's view as JSON.")
@click.argument("task_id")
def status(client: Client, task_id: str) -> int:
    _print_json(client.get(task_id))
    return 0


@_client_command("wait", "Wait for a task and print its result as JSON.")
@click.argument("task_id")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 2).")
def wait(client: Client, task_id: str, timeout: float | None) -> int:
    from .errors import TaskCancelled, TaskFailed

    shown = sys.stderr.isatty()
    columns = shutil.get_terminal_size().columns

    def show(view: dict[str, Any]) -> None:
        sys.stderr.write("\r\x1b[K" + render_progress(view, columns))
        sys.stderr.flush()

    try:
        result = client.wait(task_id, timeout, on_update=show if shown else None)
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


@_client_command("cancel", "Cancel a queued or running task.")
@click.argument("task_id")
def cancel(client: Client, task_id: str) -> int:
    _print_json(client.cancel(task_id))
    return 0


@_client_command("list", "List tasks, newest first, as JSON.")
@click.option("--status", "status_", default=None, help="Only tasks with this status.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--skip", type=int, default=0, show_default=True)
def list_tasks(client: Client, status_: str | None, limit: int, skip: int) -> int:
    _print_json(client.list(status_, limit=limit, skip=skip))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `asynctask` command; returns the exit code."""
    try:
        code = cli.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="asynctask",
                        standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`asynctask status ... | head`): not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return code if isinstance(code, int) else 0


# -- schedules: list, pause, resume and trigger them over HTTP ------------------------------------

@cli.group("schedules", epilog=EPILOG)
def schedules_group() -> None:
    """List, pause, resume and trigger the schedules of the task type at URL."""


def _schedules_command(name: str, summary: str) -> Callable[[Callable[..., int]], click.Command]:
    """A `schedules` subcommand: a client command whose schedule NAME is checked first, so a
    name never steers the request to another path."""

    def check(kwargs: dict[str, Any]) -> None:
        from .schedules.schedule import check_name

        if "name" in kwargs:
            check_name(kwargs["name"])

    return _client_command(name, summary, schedules_group, check)


@_schedules_command("list", "Print the schedules, with their last and next ticks, as JSON.")
def schedules_list(client: Client) -> int:
    _print_json(client.call("GET", "schedules")["schedules"])
    return 0


@_schedules_command("pause", "Pause a schedule; prints its view as JSON.")
@click.argument("name")
def schedules_pause(client: Client, name: str) -> int:
    _print_json(client.call("POST", f"schedules/{name}/pause", json={}))
    return 0


@_schedules_command("resume", "Resume a schedule from its next tick; prints its view as JSON.")
@click.argument("name")
def schedules_resume(client: Client, name: str) -> int:
    _print_json(client.call("POST", f"schedules/{name}/resume", json={}))
    return 0


@_schedules_command("trigger", "Run a schedule's task once now; prints the task's id.")
@click.argument("name")
def schedules_trigger(client: Client, name: str) -> int:
    print(client.call("POST", f"schedules/{name}/trigger", json={})["task_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
