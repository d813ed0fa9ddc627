"""The operator's dashboard at /dashboard, in a real browser (headless Chromium via Playwright).

Each test serves a fresh app from a thread and drives the page as an operator would: by the
visible text, the labels and the names of buttons. Waiting is Playwright's auto-waiting
`expect(...)` (or a poll with a deadline), never a bare sleep.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from dashboard_app import app_of
from flask import Flask
from playwright.sync_api import BrowserContext, Page, expect
from waiting import wait_for, wait_until

from asynctask import AsyncTask, report_progress
from asynctask.web.dashboard import auth, views

pytestmark = pytest.mark.timeout(60)

SCRIPT = "<script>window.pwned = 'script'</script>"
IMAGE = "<img src=x onerror=\"window.pwned = 'img'\">"
TOKEN = "dashboard-test-token"


# -- sample tasks ---------------------------------------------------------------------------

class Square(AsyncTask):
    """Returns the square of `n`; logs what it does."""

    def main(self, logger: logging.Logger, n: int, label: str = "") -> Any:
        logger.info("squaring %d for %s", n, label or "nobody")
        return {"n": n, "square": n * n, "label": label}


class Explode(AsyncTask):
    """Fails with `reason` as the error's message."""

    def main(self, logger: logging.Logger, reason: str) -> Any:
        logger.info("about to fail")
        raise RuntimeError(reason)


class Gated(AsyncTask):
    """Runs until the test opens its gate; reports progress and logs on both sides of it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def main(self, logger: logging.Logger, name: str) -> Any:
        logger.info("waiting at the gate: %s", name)
        report_progress(40, "half way to the gate")
        if not self.gate.wait(timeout=30):
            raise RuntimeError("the test never opened the gate")
        logger.info("through the gate: %s", name)
        return f"{name} done"


class Echo(AsyncTask):
    """Returns its params as they came."""

    def main(self, logger: logging.Logger, text: str, html: str) -> Any:
        logger.info("echo %s %s", text, html)
        return {"text": text, "html": html}


# -- fixtures -------------------------------------------------------------------------------

class Recorded:
    """What the browser did: the URLs it requested and the console messages."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.console: list[str] = []


@pytest.fixture
def recorded() -> Recorded:
    return Recorded()


@pytest.fixture
def page(context: BrowserContext, recorded: Recorded) -> Page:
    page = context.new_page()
    page.on("request", lambda request: recorded.requests.append(request.url))
    page.on("console", lambda message: recorded.console.append(f"{message.type}: {message.text}"))
    page.on("dialog", lambda dialog: dialog.accept())  # the bulk actions ask first
    return page


def served_running(make_task: Any, serve: Any, name: str) -> tuple[Any, str, str]:
    """A `Gated` task running `name` (it waits at its gate), and the base URL of an app serving it."""
    gated = make_task(Gated)
    task_id = gated.run(name=name)
    wait_for(gated, task_id, ("running",))
    return gated, task_id, serve(app_of(gated))


def row(page: Page, task_id: str) -> Any:
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=task_id, exact=True))


def no_csp_violation(recorded: Recorded) -> None:
    refused = [line for line in recorded.console if "Content Security Policy" in line or "Refused to" in line]
    assert not refused, refused


# -- overview -------------------------------------------------------------------------------

def test_overview_shows_each_type_with_counts_charts_and_workers(make_task, serve, page, recorded, tmp_path):
    square, explode = make_task(Square), make_task(Explode)
    for n in (2, 3):
        wait_for(square, square.run(n=n))
    wait_for(explode, explode.run(reason="disk full"))
    base = serve(app_of(square, explode))

    page.goto(f"{base}/dashboard")
    expect(page).to_have_title("Overview · asynctask")
    square_card = page.locator("section.card").filter(has=page.get_by_role("heading", name="Square"))
    explode_card = page.locator("section.card").filter(has=page.get_by_role("heading", name="Explode"))
    expect(square_card.get_by_role("link", name="2 success")).to_be_visible()
    expect(square_card.get_by_role("link", name="0 failed")).to_be_visible()
    expect(explode_card.get_by_role("link", name="1 failed")).to_be_visible()
    expect(square_card.get_by_text("/api/square")).to_be_visible()
    # The charts describe the last hour in words too.
    expect(square_card.get_by_role("img", name="Throughput of Square")).to_have_attribute(
        "aria-label", "Throughput of Square, last 60 minutes: 2 submitted, 2 started, 2 succeeded, 0 failed, 0 cancelled."
    )
    expect(square_card.get_by_role("img", name="Queue wait of Square")).to_be_visible()
    expect(square_card.locator(".figure").filter(has_text="Queue depth")).to_contain_text("0")
    # Both types run in this process: one worker, with its host and pid.
    workers = page.locator("#workers")
    expect(workers.get_by_role("row")).to_have_count(2)
    worker = square.workers()[0]
    expect(workers.get_by_role("row").nth(1)).to_contain_text(str(worker["pid"]))
    expect(workers.get_by_role("row").nth(1)).to_contain_text(worker["host"])
    expect(workers.get_by_role("row").nth(1)).to_contain_text("Square")
    # A count is a link to the list of those tasks.
    explode_card.get_by_role("link", name="1 failed").click()
    expect(page).to_have_url(f"{base}/dashboard/tasks?type=Explode&status=failed")
    expect(page.get_by_role("row")).to_have_count(2)
    page.goto(f"{base}/dashboard")
    page.screenshot(path=tmp_path / "overview.png", full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000
    no_csp_violation(recorded)


def test_running_tasks_and_queue_depth_on_the_overview(make_task, serve, page):
    gated = make_task(Gated, max_worker=1)
    running = gated.run(name="first")
    wait_for(gated, running, ("running",))
    gated.run(name="second")
    base = serve(app_of(gated))
    page.goto(f"{base}/dashboard")
    expect(page.locator(".figure").filter(has_text="Queue depth")).to_contain_text("1")
    expect(page.locator(".figure").filter(has_text="Running")).to_contain_text("1")
    expect(row(page, running)).to_contain_text("40%")
    gated.gate.set()
    # The page follows: the running task leaves "Running now" without a reload.
    expect(page.locator("#running")).to_contain_text("No task is running.", timeout=20_000)


# -- the list ---------------------------------------------------------------------------------

def test_list_newest_first_with_status_text_and_counts(make_task, serve, page):
    square, explode = make_task(Square), make_task(Explode)
    ids = []
    for n in range(3):
        ids.append(square.run(n=n))
        wait_for(square, ids[-1])
    failed = explode.run(reason="bad input")
    wait_for(explode, failed)
    base = serve(app_of(square, explode))

    page.goto(f"{base}/dashboard/tasks")
    rows = page.get_by_role("row")
    expect(rows).to_have_count(5)  # the header and four tasks
    order = [rows.nth(i).get_by_role("link").inner_text() for i in range(1, 5)]
    assert order == [failed, *reversed(ids)]
    expect(row(page, ids[0]).get_by_text("success", exact=True)).to_be_visible()
    expect(row(page, failed).get_by_text("failed", exact=True)).to_be_visible()
    expect(row(page, failed)).to_contain_text("RuntimeError: bad input")
    tabs = page.get_by_role("navigation", name="Tasks by status")
    expect(tabs.get_by_role("link", name="all 4")).to_be_visible()
    expect(tabs.get_by_role("link", name="success 3")).to_be_visible()
    expect(tabs.get_by_role("link", name="failed 1")).to_be_visible()


def test_a_task_finishing_while_the_page_is_open_shows_success(make_task, serve, page):
    gated, task_id, base = served_running(make_task, serve, "slow")

    page.goto(f"{base}/dashboard/tasks")
    expect(row(page, task_id).get_by_text("running", exact=True)).to_be_visible()
    page.evaluate("window.stillTheSamePage = true")
    gated.gate.set()
    expect(row(page, task_id).get_by_text("success", exact=True)).to_be_visible()
    assert page.evaluate("window.stillTheSamePage") is True  # no reload


def test_filter_by_type_and_status_and_search_ids_params_and_errors(make_task, serve, page):
    square, explode = make_task(Square), make_task(Explode)
    alpha = square.run(n=1, label="alpha-report")
    created = square.retrieve(alpha)["created_at"]
    wait_until(lambda: datetime.now(timezone.utc) > created + timedelta(milliseconds=2))  # newest first, no tie
    beta = square.run(n=2, label="beta-report")
    boom = explode.run(reason="quota exceeded for tenant 42")
    for task, task_id in ((square, alpha), (square, beta), (explode, boom)):
        wait_for(task, task_id)
    base = serve(app_of(square, explode))
    page.goto(f"{base}/dashboard/tasks")
    links = page.locator("#task-list").get_by_role("link")

    page.get_by_label("Type", exact=True).select_option("Explode")  # applied as soon as it changes
    expect(page).to_have_url(f"{base}/dashboard/tasks?type=Explode&status=&q=")
    expect(links).to_have_text([boom])

    page.get_by_label("Type", exact=True).select_option("")
    expect(page).to_have_url(f"{base}/dashboard/tasks?type=&status=&q=")  # that page, before the next change
    page.get_by_label("Status", exact=True).select_option("success")
    expect(links).to_have_text([beta, alpha])

    page.get_by_label("Status", exact=True).select_option("")
    expect(page).to_have_url(f"{base}/dashboard/tasks?type=&status=&q=")
    page.get_by_label("Search", exact=True).fill("beta-rep")  # text in params
    page.get_by_role("button", name="Apply").click()
    expect(links).to_have_text([beta])

    page.get_by_label("Search", exact=True).fill("tenant 42")  # text in the error
    page.get_by_label("Search", exact=True).press("Enter")
    expect(links).to_have_text([boom])

    page.get_by_label("Search", exact=True).fill(alpha[4:14])  # part of a task id
    page.get_by_label("Search", exact=True).press("Enter")
    expect(links).to_have_text([alpha])

    page.get_by_label("Search", exact=True).fill("nothing like this")
    page.get_by_label("Search", exact=True).press("Enter")
    expect(page.get_by_text("No task matches this filter.")).to_be_visible()


# -- a task's page ----------------------------------------------------------------------------

def test_task_page_shows_params_result_log_and_details(make_task, serve, page, tmp_path):
    square = make_task(Square)
    task_id = square.run(n=7, label="weekly")
    view = wait_for(square, task_id)
    base = serve(app_of(square))

    page.goto(f"{base}/dashboard")
    page.goto(f"{base}/dashboard/tasks")
    page.get_by_role("link", name=task_id).click()
    expect(page).to_have_url(f"{base}/dashboard/tasks/Square/{task_id}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(task_id)
    expect(page.locator(".task-status")).to_contain_text("success")
    params = page.get_by_role("region", name="Params")
    expect(params).to_contain_text('"n": 7')
    expect(params).to_contain_text('"label": "weekly"')
    expect(page.get_by_role("region", name="Result")).to_contain_text('"square": 49')
    expect(page.locator("#log")).to_contain_text("squaring 7 for weekly")
    details = page.locator(".details")
    expect(details).to_contain_text(view["trace_id"])
    expect(details.locator("div").filter(has_text="Attempts")).to_contain_text("1")
    expect(details.locator("div").filter(has_text="Finished")).to_contain_text("UTC")
    expect(page.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
    # A success runs again only past the type's rerun_time_limit: Retry would do nothing.
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_disabled()
    page.screenshot(path=tmp_path / "task.png", full_page=True)
    assert (tmp_path / "task.png").stat().st_size > 10_000


def test_task_page_follows_the_log_and_progress_while_the_task_runs(make_task, serve, page):
    gated, task_id, base = served_running(make_task, serve, "follow-me")

    page.goto(f"{base}/dashboard/tasks/Gated/{task_id}")
    log = page.locator("#log")
    expect(log).to_contain_text("waiting at the gate: follow-me")
    expect(page.locator(".task-progress")).to_contain_text("40%")
    expect(page.locator(".task-progress")).to_contain_text("half way to the gate")
    expect(page.get_by_role("button", name="Retry", exact=True)).to_be_disabled()
    gated.gate.set()
    expect(log).to_contain_text("through the gate: follow-me")
    expect(page.locator(".task-status")).to_contain_text("success")
    expect(page.get_by_role("region", name="Result")).to_contain_text('"follow-me done"')
    # Each line once: the page read on from the byte offset, never the whole file again.
    assert log.inner_text().count("waiting at the gate: follow-me") == 1
    log_requests = [u for u in page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
                    if "/log?offset=" in u]
    assert any(not u.endswith("offset=0") for u in log_requests), log_requests


# -- actions ----------------------------------------------------------------------------------

def test_cancel_a_queued_task(make_task, serve, page):
    gated = make_task(Gated, max_worker=1)
    blocker = gated.run(name="blocker")
    wait_for(gated, blocker, ("running",))
    waiting = gated.run(name="waiting")
    base = serve(app_of(gated))

    page.goto(f"{base}/dashboard/tasks/Gated/{waiting}")
    expect(page.locator(".task-status")).to_contain_text("queued")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("Task cancelled.")
    expect(page.locator(".task-status")).to_contain_text("cancelled")
    assert gated.retrieve(waiting)["status"] == "cancelled"
    assert gated.retrieve(blocker)["status"] == "running"


def test_retry_a_failed_task_from_the_keyboard(make_task, serve, page):
    explode = make_task(Explode)
    task_id = explode.run(reason="flaky network")
    wait_for(explode, task_id)
    base = serve(app_of(explode))

    page.goto(f"{base}/dashboard/tasks/Explode/{task_id}")
    expect(page.get_by_role("region", name="Error")).to_contain_text("RuntimeError: flaky network")
    page.get_by_role("button", name="Retry", exact=True).focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_have_text("Task submitted again.")
    wait_until(lambda: explode.retrieve(task_id)["attempts"] == 2, "the second attempt")
    wait_for(explode, task_id)
    expect(page.locator(".details div").filter(has_text="Attempts")).to_contain_text("2")


def test_retry_all_failed_for_the_current_filter(make_task, serve, page):
    explode, square = make_task(Explode), make_task(Square)
    mine = [explode.run(reason=f"mine {i}") for i in range(3)]
    other = explode.run(reason="someone else's")
    done = square.run(n=4)
    for task_id in [*mine, other]:
        wait_for(explode, task_id)
    wait_for(square, done)
    base = serve(app_of(explode, square))

    page.goto(f"{base}/dashboard/tasks?type=Explode&q=mine")
    expect(page.locator("#task-list").get_by_role("link")).to_have_count(3)
    page.get_by_role("button", name="Retry all failed").click()
    expect(page.get_by_role("status")).to_have_text("Retried 3 of 3 failed task(s).")
    expect(page).to_have_url(f"{base}/dashboard/tasks?type=Explode&q=mine")  # the filter stays
    for task_id in mine:
        wait_until(lambda task_id=task_id: explode.retrieve(task_id)["attempts"] == 2, f"{task_id} retried")
    assert explode.retrieve(other)["attempts"] == 1
    assert square.retrieve(done)["attempts"] == 1


def test_cancel_all_queued_for_the_current_filter(make_task, serve, page):
    gated = make_task(Gated, max_worker=1)
    blocker = gated.run(name="blocker")
    wait_for(gated, blocker, ("running",))
    queued = [gated.run(name=f"batch-{i}") for i in range(3)]
    base = serve(app_of(gated))

    page.goto(f"{base}/dashboard/tasks?status=queued")
    expect(page.locator("#task-list").get_by_role("link")).to_have_count(3)
    expect(page.get_by_role("button", name="Retry all failed")).to_be_disabled()
    page.get_by_role("button", name="Cancel all queued").click()
    expect(page.get_by_role("status")).to_have_text("Cancelled 3 of 3 queued task(s).")
    expect(page.get_by_text("No task matches this filter.")).to_be_visible()
    assert [gated.retrieve(t)["status"] for t in queued] == ["cancelled"] * 3
    assert gated.retrieve(blocker)["status"] == "running"


# -- security -------------------------------------------------------------------------------

def test_sign_in_with_the_token(make_task, serve, page, context):
    square = make_task(Square, api_token=TOKEN)
    task_id = square.run(n=5)
    wait_for(square, task_id)
    base = serve(app_of(square))

    page.goto(f"{base}/dashboard/tasks/Square/{task_id}")
    expect(page).to_have_url(f"{base}/dashboard/login?next=/dashboard/tasks/Square/{task_id}")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_text(task_id)).to_have_count(0)

    page.get_by_label("Token").fill("not-the-token")
    with page.expect_response(f"{base}/dashboard/login") as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.get_by_role("alert")).to_contain_text("That token is not valid")
    assert not [c for c in context.cookies() if c["name"] == auth.SESSION_COOKIE]

    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/dashboard/tasks/Square/{task_id}")
    expect(page.get_by_role("region", name="Result")).to_contain_text('"square": 25')
    session = next(c for c in context.cookies() if c["name"] == auth.SESSION_COOKIE)
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/dashboard"
    assert TOKEN not in session["value"]
    csrf = next(c for c in context.cookies() if c["name"] == auth.CSRF_COOKIE)
    assert csrf["httpOnly"] is True and csrf["sameSite"] == "Strict"

    # The cookie holds no per-process secret: another app (as another worker process would)
    # with the same token takes it. (Cookies do not depend on the port.)
    other = make_task(Square, api_token=TOKEN)
    other_base = serve(app_of(other))
    page.goto(f"{other_base}/dashboard")
    expect(page).to_have_url(f"{other_base}/dashboard")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()

    page.goto(f"{base}/dashboard")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto(f"{base}/dashboard")
    expect(page).to_have_url(f"{base}/dashboard/login?next=/dashboard")


def test_actions_without_the_pages_csrf_proof_are_refused(make_task, serve, page, context):
    gated = make_task(Gated, max_worker=1, api_token=TOKEN)
    blocker = gated.run(name="blocker")
    wait_for(gated, blocker, ("running",))
    waiting = gated.run(name="waiting")
    base = serve(app_of(gated))
    page.goto(f"{base}/dashboard/login")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    csrf = next(c for c in context.cookies() if c["name"] == auth.CSRF_COOKIE)["value"]

    cancel = f"{base}/dashboard/tasks/Gated/{waiting}/cancel"
    # The browser context's request API carries the session cookie, as a forged request would.
    for form, headers in [
        ({}, {}),
        ({"csrf_token": "x" * 43}, {}),
        ({"csrf_token": csrf}, {"Origin": "https://evil.example"}),
        ({"csrf_token": csrf}, {"Sec-Fetch-Site": "cross-site"}),
    ]:
        answer = context.request.post(cancel, form=form, headers=headers, max_redirects=0)
        assert answer.status == 403, (form, headers, answer.status)
    bulk = context.request.post(f"{base}/dashboard/bulk", form={"action": "cancel"}, max_redirects=0)
    assert bulk.status == 403
    assert gated.retrieve(waiting)["status"] == "queued"
    # Without the session, not even the right proof helps.
    signed_out = context.request.post(cancel, form={"csrf_token": csrf}, max_redirects=0,
                                      headers={"Cookie": f"{auth.CSRF_COOKIE}={csrf}"})
    assert signed_out.status == 401
    assert gated.retrieve(waiting)["status"] == "queued"
    # The page's own form carries the proof.
    page.goto(f"{base}/dashboard/tasks/Gated/{waiting}")
    page.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator(".task-status")).to_contain_text("cancelled")


def test_a_form_on_another_site_cannot_act_even_without_a_token(make_task, serve, page):
    explode = make_task(Explode)
    task_id = explode.run(reason="stays failed")
    wait_for(explode, task_id)
    base = serve(app_of(explode))
    page.goto(f"{base}/dashboard/tasks/Explode/{task_id}")  # the browser holds the CSRF cookie now

    evil = Flask("evil")

    @evil.get("/")
    def form() -> str:
        return (f'<form method="post" action="{base}/dashboard/tasks/Explode/{task_id}/retry">'
                '<button>Win a prize</button></form>')

    evil_base = serve(evil)
    page.goto(evil_base)
    with page.expect_response(f"{base}/dashboard/tasks/Explode/{task_id}/retry") as answer:
        page.get_by_role("button", name="Win a prize").click()
    assert answer.value.status == 403
    view = explode.retrieve(task_id)
    assert view["status"] == "failed" and view["attempts"] == 1


def test_task_data_is_shown_as_text_and_never_runs(make_task, serve, page, recorded):
    echo, explode = make_task(Echo), make_task(Explode)
    echoed = echo.run(text=SCRIPT, html=IMAGE)
    failed = explode.run(reason=f"{SCRIPT} {IMAGE}")
    wait_for(echo, echoed)
    wait_for(explode, failed)
    base = serve(app_of(echo, explode))

    for path in ("/dashboard", f"/dashboard/tasks?q={uuid.uuid4().hex}", "/dashboard/tasks",
                 f"/dashboard/tasks/Echo/{echoed}", f"/dashboard/tasks/Explode/{failed}"):
        page.goto(base + path)
        # Let the page refresh itself: swapped-in regions must stay text too.
        expect(page.locator("body")).to_have_attribute("data-refreshes", re.compile(r"^\d+$"))
        assert page.evaluate("typeof window.pwned") == "undefined", path
    expect(page.get_by_role("region", name="Error")).to_contain_text(f"RuntimeError: {SCRIPT} {IMAGE}")
    expect(page.locator("#log")).to_contain_text("about to fail")
    page.goto(f"{base}/dashboard/tasks/Echo/{echoed}")
    expect(page.get_by_role("region", name="Params")).to_contain_text(SCRIPT)
    expect(page.get_by_role("region", name="Result")).to_contain_text(IMAGE.replace('"', '\\"'))
    expect(page.locator("#log")).to_contain_text(f"echo {SCRIPT} {IMAGE}")
    page.goto(f"{base}/dashboard/tasks")
    expect(row(page, failed)).to_contain_text(f"RuntimeError: {SCRIPT} {IMAGE}")
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert not any(urlsplit(url).path.endswith("/x") for url in recorded.requests)
    no_csp_violation(recorded)


def test_every_request_stays_on_the_origin(make_task, serve, page, recorded):
    gated, square = make_task(Gated), make_task(Square)
    running = gated.run(name="origin")
    done = square.run(n=3)
    wait_for(gated, running, ("running",))
    wait_for(square, done)
    base = serve(app_of(gated, square))

    for path in ("/dashboard", "/dashboard/tasks", f"/dashboard/tasks/Gated/{running}",
                 f"/dashboard/tasks/Square/{done}"):
        page.goto(base + path)
        expect(page.locator("body")).to_have_attribute("data-refreshes", re.compile(r"^\d+$"))
    gated.gate.set()
    origin = urlsplit(base)
    assert recorded.requests
    assert all(urlsplit(url)[:2] == origin[:2] for url in recorded.requests), recorded.requests
    assert any("/dashboard/static/dashboard.js" in url for url in recorded.requests)
    assert any("/log?offset=" in url for url in recorded.requests)
    no_csp_violation(recorded)


def test_pages_carry_the_content_security_policy_and_frame_headers(make_task, serve, page):
    square = make_task(Square, api_token=TOKEN)
    task_id = square.run(n=1)
    wait_for(square, task_id)
    base = serve(app_of(square))

    answers = [page.goto(f"{base}/dashboard/login")]
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    for path in ("/dashboard", "/dashboard/tasks", f"/dashboard/tasks/Square/{task_id}",
                 "/dashboard/tasks/Square/no-such-task"):
        answers.append(page.goto(base + path))
    assert [a.status for a in answers] == [200, 200, 200, 200, 404]
    for answer in answers:
        headers = answer.headers
        policy = {part.split()[0]: part.split()[1:] for part in headers["content-security-policy"].split("; ")}
        assert policy["script-src"] == ["'self'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert "'unsafe-inline'" not in headers["content-security-policy"]
        assert "'unsafe-eval'" not in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "same-origin"
        assert headers["cache-control"] == "no-store"
    # No inline script and no inline event handler anywhere.
    for path in ("/dashboard", "/dashboard/tasks", f"/dashboard/tasks/Square/{task_id}"):
        page.goto(base + path)
        assert page.evaluate("[...document.scripts].every(s => s.src && !s.textContent.trim())")
        assert page.evaluate(
            "[...document.querySelectorAll('*')].every(e => ![...e.attributes].some(a => a.name.startsWith('on')))"
        )
    # A page of the dashboard cannot be framed.
    framing = Flask("framing")

    @framing.get("/")
    def frame() -> str:
        return f'<iframe src="{base}/dashboard"></iframe>'

    page.goto(serve(framing))
    frame_page = page.frames[-1]
    wait_until(lambda: frame_page.url != "about:blank" or len(page.frames) == 1, "the frame to load")
    assert "Overview" not in frame_page.content()


# -- wiring ---------------------------------------------------------------------------------

def test_every_app_has_the_dashboard(make_task):
    """app(), init_app() and a registered blueprint all bring GET /dashboard."""
    square, explode = make_task(Square), make_task(Explode)
    built = square.app("/api")
    shared = Flask("shared")
    square.init_app(shared, "/square")
    explode.init_app(shared, "/explode")
    by_blueprint = Flask("by_blueprint")
    by_blueprint.register_blueprint(explode.blueprint("/explode"))
    for app, names in ((built, ["Square"]), (shared, ["Square", "Explode"]), (by_blueprint, ["Explode"])):
        answer = app.test_client().get("/dashboard")
        assert answer.status_code == 200
        assert answer.mimetype == "text/html"
        for name in names:
            assert f">{name}</a></h2>" in answer.get_data(as_text=True)


# -- sessions scoped to their token, forged cookies, logs of real tasks, honest buttons, paging ---


def dashboard_client(app: Flask) -> Any:
    """A test client of `app` holding the dashboard's CSRF cookie; `.csrf` is its value."""
    client = app.test_client()
    client.get("/dashboard/login")  # with a token; without one, any page sets it
    if client.get_cookie(auth.CSRF_COOKIE, path="/dashboard") is None:
        client.get("/dashboard/tasks")
    client.csrf = client.get_cookie(auth.CSRF_COOKIE, path="/dashboard").value
    return client


def two_tokens_two_tasks(make_task: Any) -> tuple[Any, str, str, Any]:
    """A finished `Square` task (token alpha-token) and a failed `Explode` task (token
    beta-token): the `Explode` type, both ids and a dashboard client of an app serving both,
    not signed in."""
    square, explode = make_task(Square, api_token="alpha-token"), make_task(Explode, api_token="beta-token")
    mine, theirs = square.run(n=3), explode.run(reason="no")
    wait_for(square, mine)
    wait_for(explode, theirs)
    return explode, mine, theirs, dashboard_client(app_of(square, explode))


def sign_in(client: Any, token: str) -> None:
    answer = client.post("/dashboard/login", data={"token": token, "csrf_token": client.csrf})
    assert answer.status_code == 303, answer.data


def test_a_session_acts_only_on_the_types_its_token_signs_in(make_task):
    explode, mine, theirs, client = two_tokens_two_tasks(make_task)
    sign_in(client, "alpha-token")
    listing = client.get("/dashboard/tasks").get_data(as_text=True)
    assert mine in listing and theirs not in listing
    assert "Explode" not in client.get("/dashboard").get_data(as_text=True)
    assert client.get(f"/dashboard/tasks/Explode/{theirs}").status_code == 404
    assert client.get(f"/dashboard/tasks/Explode/{theirs}/log").status_code == 404
    retried = client.post(f"/dashboard/tasks/Explode/{theirs}/retry", data={"csrf_token": client.csrf})
    assert retried.status_code == 404 and explode.retrieve(theirs)["attempts"] == 1
    bulk = client.post("/dashboard/bulk", data={"action": "retry", "status": "failed", "csrf_token": client.csrf})
    assert bulk.status_code == 303 and explode.retrieve(theirs)["status"] == "failed", "bulk spares other types"
    assert client.get(f"/dashboard/tasks/Square/{mine}").status_code == 200


@pytest.mark.parametrize("cookie", [
    "garbage", "1.2.3", "x.y", "99999999999999999999999." + "0" * 64, "²²²²²²²²²²." + "a" * 64,
    "1700000000." + "é" * 64, "." * 40, "9999999999." + "z" * 64, "",
])
def test_a_forged_or_malformed_cookie_is_the_sign_in_page(make_task, cookie):
    square = make_task(Square, api_token="alpha-token")
    client = app_of(square).test_client()
    client.set_cookie(auth.SESSION_COOKIE, cookie, path="/dashboard")
    answer = client.get("/dashboard/tasks")
    assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"]


def test_the_log_view_serves_only_the_log_of_a_task_that_exists(make_task, tmp_path):
    square = make_task(Square)
    task_id = square.run(n=2)
    wait_for(square, task_id)
    (tmp_path / "logs" / "secret.log").write_text("not a task's log")
    client = app_of(square).test_client()
    assert client.get("/dashboard/tasks/Square/secret/log").status_code == 404
    assert client.get("/dashboard/tasks/Square/..%2Fsecret/log").status_code == 404
    assert b"squaring 2" in client.get(f"/dashboard/tasks/Square/{task_id}/log").data


def test_retry_of_a_task_the_run_rule_would_not_rerun_is_no_false_success(make_task):
    square, explode = make_task(Square), make_task(Explode)
    done, failed = square.run(n=4), explode.run(reason="try again")
    wait_for(square, done)
    wait_for(explode, failed)
    client = dashboard_client(app_of(square, explode))
    page = client.get(f"/dashboard/tasks/Square/{done}").get_data(as_text=True)
    assert re.search(r'<button[^>]*id="retry"[^>]*disabled', page)
    answer = client.post(f"/dashboard/tasks/Square/{done}/retry", data={"csrf_token": client.csrf},
                         follow_redirects=True).get_data(as_text=True)
    assert "Not submitted again" in answer and "Task submitted again" not in answer
    assert square.retrieve(done)["attempts"] == 1
    page = client.get(f"/dashboard/tasks/Explode/{failed}").get_data(as_text=True)
    assert not re.search(r'<button[^>]*id="retry"[^>]*disabled', page)
    answer = client.post(f"/dashboard/tasks/Explode/{failed}/retry", data={"csrf_token": client.csrf},
                         follow_redirects=True).get_data(as_text=True)
    assert "Task submitted again" in answer
    assert wait_for(explode, failed)["attempts"] == 2


@pytest.mark.parametrize("page_number", ["1e20", "99999999999999999999", "-5", "abc", "٣", "0", "2147483647"])
def test_paging_is_bounded(make_task, page_number):
    square, explode = make_task(Square), make_task(Explode)
    client = app_of(square, explode).test_client()
    for query in (f"page={page_number}", f"page={page_number}&type=Square"):
        assert client.get(f"/dashboard/tasks?{query}").status_code == 200


def retry_button(html: str, name: str = "retry") -> str:
    """The `<button>` tag of the task page's Retry (or Cancel) form."""
    found = re.search(rf'<button[^>]*id="{name}"[^>]*>', html)
    assert found, html
    return found.group(0)


def test_signing_in_with_a_second_token_adds_its_types_to_the_session(make_task):
    explode, mine, theirs, client = two_tokens_two_tasks(make_task)
    sign_in(client, "alpha-token")
    sign_in(client, "beta-token")
    listing = client.get("/dashboard/tasks").get_data(as_text=True)
    assert mine in listing and theirs in listing
    assert client.get(f"/dashboard/tasks/Square/{mine}").status_code == 200
    assert client.get(f"/dashboard/tasks/Explode/{theirs}").status_code == 200
    session = client.get_cookie(auth.SESSION_COOKIE, path="/dashboard").value
    assert "alpha-token" not in session and "beta-token" not in session
    client.post("/dashboard/logout", data={"csrf_token": client.csrf})
    assert client.get("/dashboard/tasks").status_code == 302  # signing out ends both


def test_a_type_the_session_cannot_see_is_not_found_by_the_list_filter_or_a_bulk_action(make_task):
    explode, square = make_task(Explode, api_token="alpha-token"), make_task(Square, api_token="beta-token")
    failed = explode.run(reason="stays failed")
    wait_for(explode, failed)
    client = dashboard_client(app_of(explode, square))
    sign_in(client, "alpha-token")
    assert client.get("/dashboard/tasks?type=Square").status_code == 404
    answer = client.post("/dashboard/bulk", data={"action": "retry", "type": "Square", "csrf_token": client.csrf})
    assert answer.status_code == 404
    assert explode.retrieve(failed)["attempts"] == 1, "a bulk action never falls back to every type"


@pytest.mark.parametrize("task_id", ["bad!id", "a" * 129, "sp ace", "ünï"])
def test_an_invalid_task_id_is_not_found(make_task, task_id):
    square = make_task(Square)
    client = dashboard_client(app_of(square))
    path = f"/dashboard/tasks/Square/{quote(task_id)}"
    assert client.get(path).status_code == 404
    assert client.get(f"{path}/log").status_code == 404
    for action in ("cancel", "retry"):
        assert client.post(f"{path}/{action}", data={"csrf_token": client.csrf}).status_code == 404


def test_retry_follows_the_run_rule_for_pending_ownerless_and_outdated_tasks(make_task):
    explode, square = make_task(Explode), make_task(Square, rerun_time_limit=3600)
    pending, ownerless, done = explode.run(reason="a"), explode.run(reason="b"), square.run(n=5)
    for task, task_id in ((explode, pending), (explode, ownerless), (square, done)):
        wait_for(task, task_id)
    # A task left pending, and one left running with no worker (as the upstream tool's data may).
    explode.collection.update_one({"task_id": pending}, {"$set": {"status": "pending"}})
    explode.collection.update_one({"task_id": ownerless}, {"$set": {"status": "running"},
                                                          "$unset": {"owner": "", "worker": ""}})
    client = dashboard_client(app_of(explode, square))

    square_page = client.get(f"/dashboard/tasks/Square/{done}").get_data(as_text=True)
    assert "disabled" in retry_button(square_page), "a success younger than rerun_time_limit stays"
    square.collection.update_one({"task_id": done},
                                 {"$set": {"update_time": datetime.now(timezone.utc) - timedelta(hours=2)}})
    for task, key, task_id in ((explode, "Explode", pending), (explode, "Explode", ownerless), (square, "Square", done)):
        html = client.get(f"/dashboard/tasks/{key}/{task_id}").get_data(as_text=True)
        assert "disabled" not in retry_button(html), task_id
        answer = client.post(f"/dashboard/tasks/{key}/{task_id}/retry", data={"csrf_token": client.csrf},
                             follow_redirects=True).get_data(as_text=True)
        assert "Task submitted again." in answer, task_id
        wait_until(lambda task=task, task_id=task_id: task.retrieve(task_id)["attempts"] == 2, f"{task_id} re-run")


def test_a_pending_task_cannot_be_cancelled_and_says_so(make_task):
    explode = make_task(Explode)
    task_id = explode.run(reason="left pending")
    wait_for(explode, task_id)
    explode.collection.update_one({"task_id": task_id}, {"$set": {"status": "pending"}})
    client = dashboard_client(app_of(explode))
    html = client.get(f"/dashboard/tasks/Explode/{task_id}").get_data(as_text=True)
    assert "disabled" in retry_button(html, "cancel")
    answer = client.post(f"/dashboard/tasks/Explode/{task_id}/cancel", data={"csrf_token": client.csrf},
                         follow_redirects=True).get_data(as_text=True)
    assert "Not cancelled: the task is pending." in answer
    assert explode.retrieve(task_id)["status"] == "pending"


@pytest.mark.parametrize("query", ["page=5", "type=Square&page=5", "page=99999999999999999999",
                                   "type=Square&page=99999999999999999999"])
def test_a_page_past_the_end_shows_the_last_page(make_task, query):
    square, explode = make_task(Square), make_task(Explode)
    task_id = square.run(n=1)
    wait_for(square, task_id)
    html = app_of(square, explode).test_client().get(f"/dashboard/tasks?{query}").get_data(as_text=True)
    assert task_id in html
    assert "1–1 of 1" in html


def test_the_list_of_every_type_offers_no_older_page_it_cannot_show(make_task, monkeypatch):
    monkeypatch.setattr(views, "PAGE_SIZE", 2)  # three tasks fill more than a page
    monkeypatch.setattr(views, "MAX_MERGED_PAGE", 1)  # and every type's list shows one page
    square, explode = make_task(Square), make_task(Explode)
    ids = [square.run(n=n) for n in range(3)]
    for task_id in ids:
        wait_for(square, task_id)
    client = app_of(square, explode).test_client()
    merged = client.get("/dashboard/tasks").get_data(as_text=True)
    assert "Older →" not in merged
    assert "Pick a type to see older tasks." in merged
    one_type = client.get("/dashboard/tasks?type=Square").get_data(as_text=True)
    assert "Older →" in one_type
    assert sum(task_id in client.get("/dashboard/tasks?type=Square&page=2").get_data(as_text=True)
               for task_id in ids) == 1
