"""Lifecycle signals (blinker, which Flask brings): cross-cutting concerns hang off these.

Metrics subscribe here instead of being called from inside the lifecycle. The sender is the
`AsyncTask` instance; receivers must be quick and must not raise (an error is logged).
"""

from __future__ import annotations

from blinker import Namespace

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
