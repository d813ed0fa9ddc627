"""Schedules: a task type that runs by itself, on cron expressions or fixed intervals, with no
extra process, no leader and no lock.

- `schedule`: `Schedule`, the checked value; its ticks, time zones and catch-up arithmetic.
- `book`: `ScheduleBook` (`api.schedules`): add, list, update, pause, resume, trigger,
  remove; and the evaluation each worker runs in its loop.
- `errors`: `InvalidSchedule` (400), `ScheduleNotFound` (404), `ScheduleExists` (409).

The stored side is `asynctask.store.schedules`; the routes `asynctask.web.schedule_routes`.
"""

from ..errors import InvalidSchedule, ScheduleExists, ScheduleNotFound
from .book import ScheduleBook
from .schedule import Schedule

__all__ = ["InvalidSchedule", "Schedule", "ScheduleBook", "ScheduleExists", "ScheduleNotFound"]
