"""Lifecycle signals (blinker, which Flask brings): cross-cutting concerns hang off these.

Metrics subscribe here instead of being called from inside the lifecycle. The sender is the
`AsyncTask` instance; receivers must be quick; one that raises is logged and swallowed (`emit`).
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace

logger = logging.getLogger(__name__)

_signals = Namespace()

#: A task was accepted to run (a new task or a re-run). Keyword: `task_id`.
task_submitted = _signals.signal("task-submitted")
#: An attempt started in this process. Keyword: `attempt`.
attempt_started = _signals.signal("attempt-started")
#: An attempt that started in this process ended. Keywords: `attempt` (its `final_status` is
#: the status it wrote, or None), `ending` (an `Ending`), `seconds` it ran.
attempt_ended = _signals.signal("attempt-ended")
#: A task reached a final status without an attempt of this process (a cancel before it
#: started, a task failed after its workers were lost). Keywords: `status`, `count`.
task_finished = _signals.signal("task-finished")
#: A claim of this process found due tasks but could start none: a limit held them back.
#: Keyword: `reason` ("rate" or "concurrency").
claim_held = _signals.signal("claim-held")


def emit(signal: Any, sender: Any, **kwargs: Any) -> None:
    """Send `signal` to each receiver in turn; one that raises is logged and the rest still run.

    Receivers are notifications: a raising one (a metrics backend whose folder is gone) never
    decides whether an outcome is recorded or a slot is freed.
    """
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            logger.exception("a receiver of the %s signal raised: %r", signal.name, receiver)
