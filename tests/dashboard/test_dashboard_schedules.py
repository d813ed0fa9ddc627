"""The dashboard's Schedules page, in a real browser (headless Chromium via Playwright).

Each test serves a fresh app from a thread and drives the page as an operator would: by the
visible text, the labels and the names of buttons. Waiting is Playwright's auto-waiting
`expect(...)` (or `wait_for` with a deadline), never a bare sleep.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from dashboard_app import app_of
from playwright.sync_api import BrowserContext, Page, expect
from waiting import wait_for

from asynctask import AsyncTask, Schedule
from asynctask.web.dashboard import auth

pytestmark = pytest.mark.timeout(90)

TOKEN = "schedules-dashboard-token"
DAY = timedelta(days=1)
#: Before the first tick of `Nightly` (02:00 in Berlin is 01:00 UTC in winter).
START = datetime(2030, 1, 1, 12, tzinfo=timezone.utc)


class Nightly(AsyncTask):
    """Reports at 02:00 in Berlin; fails on the ticks of even days (to give the strip colours)."""

    schedules = [
        Schedule("nightly", cron="0 2 * * *", tz="Europe/Berlin", params={"scope": "all"}),
        Schedule("refresh", every=timedelta(minutes=15), catch_up="none"),
    ]

    def main(self, logger: logging.Logger, scope: str = "some", scheduled_for: str = "") -> Any:
        if scheduled_for and datetime.fromisoformat(scheduled_for).day % 2 == 0:
            raise RuntimeError(f"no report on {scheduled_for[:10]}")
        return {"scope": scope}


class Other(AsyncTask):
    """A second type, with its own token."""

    schedules = [Schedule("hourly", cron="0 * * * *")]

    def main(self, logger: logging.Logger) -> Any:
        return 1


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def console() -> list[str]:
    return []


@pytest.fixture
def page(context: BrowserContext, console: list[str]) -> Page:
    page = context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    return page


def row(page: Page, name: str) -> Any:
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=name))


def ran_three_nights(task: AsyncTask) -> list[str]:
    """Tick the nightly schedule on three nights (fake clock) and wait for the three tasks."""
    task.schedules.list(now=START)
    made = []
    for night in range(3):
        made += [t for t in task.schedules.evaluate(now=START + night * DAY + timedelta(hours=13)) if "nightly" in t]
    for task_id in made:
        wait_for(task, task_id)
    return made


# -- the page ---------------------------------------------------------------------------------


def test_the_page_lists_each_schedule_in_words_with_its_runs(make_task, serve, page, console, tmp_path):
    nightly = make_task(Nightly)
    made = ran_three_nights(nightly)
    assert made == ["sched:nightly:20300102T010000Z", "sched:nightly:20300103T010000Z",
                    "sched:nightly:20300104T010000Z"]
    base = serve(app_of(nightly))

    page.goto(f"{base}/dashboard")
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Schedules").click()
    expect(page).to_have_url(f"{base}/dashboard/schedules")
    expect(page).to_have_title("Schedules · asynctask")
    first = row(page, "nightly")
    expect(first).to_contain_text("At 02:00 every day")
    expect(first).to_contain_text("0 2 * * *")
    expect(first).to_contain_text("Europe/Berlin")
    expect(first).to_contain_text("in code")
    # The last run with its status, as text, and a link to its task.
    expect(first.locator(".status")).to_have_text("failed")
    expect(first.get_by_role("link", name="sched:nightly:20300104T010000Z")).to_be_visible()
    # The strip: the last runs by status, oldest first, each a link to its task.
    strip = first.get_by_role("list", name="Last runs of nightly, oldest first")
    expect(strip.get_by_role("link")).to_have_count(3)
    expect(strip.get_by_role("link")).to_have_text(["failed", "success", "failed"])
    expect(strip.get_by_role("link").nth(1)).to_have_attribute("title", f"{made[1]}: success")
    # The next run: the next 02:00 in Berlin after now, shown in UTC.
    expect(first.locator("time").first).to_have_attribute("datetime", row_next_tick(nightly, "nightly"))
    second = row(page, "refresh")
    expect(second).to_contain_text("Every 15 minutes")
    expect(second.get_by_role("button", name="Pause")).to_be_enabled()
    expect(second.get_by_role("button", name="Resume")).to_be_disabled()
    expect(second.get_by_role("button", name="Run now")).to_be_enabled()
    strip.get_by_role("link").nth(1).click()
    expect(page).to_have_url(f"{base}/dashboard/tasks/Nightly/{made[1]}")
    page.go_back()
    page.screenshot(path=tmp_path / "schedules.png", full_page=True)
    assert (tmp_path / "schedules.png").stat().st_size > 10_000
    assert not [line for line in console if "Content Security Policy" in line or "Refused to" in line], console


def row_next_tick(task: AsyncTask, name: str) -> str:
    return task.schedules.get(name)["next_tick"].isoformat()


def test_pause_resume_and_run_now_from_the_page(make_task, serve, page):
    nightly = make_task(Nightly)
    base = serve(app_of(nightly))
    page.goto(f"{base}/dashboard/schedules")
    refresh = row(page, "refresh")
    expect(refresh).to_contain_text("never")  # no tick yet

    refresh.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("status")).to_have_text("Paused refresh: it enqueues no tick until it is resumed.")
    expect(refresh).to_contain_text("paused")
    expect(refresh.get_by_role("button", name="Pause")).to_be_disabled()
    expect(refresh.get_by_role("button", name="Resume")).to_be_enabled()
    assert nightly.schedules.get("refresh")["enabled"] is False

    refresh.get_by_role("button", name="Resume").focus()
    page.keyboard.press("Enter")  # usable by keyboard
    expect(page.get_by_role("status")).to_contain_text("Resumed refresh")
    expect(refresh.get_by_role("button", name="Pause")).to_be_enabled()
    assert nightly.schedules.get("refresh")["enabled"] is True

    nightly_row = row(page, "nightly")
    nightly_row.get_by_role("button", name="Run now").click()
    expect(page.get_by_role("status")).to_contain_text("Started a run of nightly now.")
    task_id = page.get_by_role("status").get_by_role("link").inner_text()
    assert task_id.startswith("sched:nightly:run-")
    # The page follows the run without a reload: its status becomes the last run's.
    expect(nightly_row.locator(".status")).to_have_text("success", timeout=20_000)
    expect(nightly_row.get_by_role("list", name="Last runs of nightly, oldest first").get_by_role("link")).to_have_text(
        ["success"])
    assert wait_for(nightly, task_id)["status"] == "success"
    assert nightly.schedules.get("nightly")["last_tick"] is None  # a run now moves no tick


def test_an_empty_page_says_how_to_add_a_schedule(make_task, serve, page):
    class Bare(AsyncTask):
        def main(self, logger: logging.Logger) -> Any:
            return 1

    base = serve(app_of(make_task(Bare)))
    page.goto(f"{base}/dashboard/schedules")
    expect(page.get_by_text("No schedule yet.")).to_be_visible()


# -- security ---------------------------------------------------------------------------------


def test_the_page_asks_for_the_token_and_shows_only_its_types(make_task, serve, page, context):
    nightly, other = make_task(Nightly, api_token=TOKEN), make_task(Other, api_token="other-token")
    base = serve(app_of(nightly, other))
    page.goto(f"{base}/dashboard/schedules")
    expect(page).to_have_url(f"{base}/dashboard/login?next=/dashboard/schedules")
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{base}/dashboard/schedules")
    expect(row(page, "nightly")).to_be_visible()
    expect(page.get_by_role("rowheader", name="hourly")).to_have_count(0)

    csrf = next(c for c in context.cookies() if c["name"] == auth.CSRF_COOKIE)["value"]
    pause = f"{base}/dashboard/schedules/Nightly/nightly/pause"
    for form, headers in [({}, {}), ({"csrf_token": "x" * 43}, {}),
                          ({"csrf_token": csrf}, {"Origin": "https://evil.example"})]:
        answer = context.request.post(pause, form=form, headers=headers, max_redirects=0)
        assert answer.status == 403, (form, headers, answer.status)
    assert nightly.schedules.get("nightly")["enabled"] is True
    # A type this session did not sign in for is not found, even with the page's proof.
    hidden = context.request.post(f"{base}/dashboard/schedules/Other/hourly/pause", form={"csrf_token": csrf},
                                  max_redirects=0)
    assert hidden.status == 404 and other.schedules.get("hourly")["enabled"] is True
    unknown = context.request.post(f"{base}/dashboard/schedules/Nightly/missing/run", form={"csrf_token": csrf},
                                   max_redirects=0)
    assert unknown.status == 404
    answer = context.request.post(pause, form={"csrf_token": csrf}, max_redirects=0)
    assert answer.status == 303 and nightly.schedules.get("nightly")["enabled"] is False
