"""Fault injection: real worker and API processes over the test wire server, broken at random.

An API-only service (`asynctask serve tests/fault_tasks.py --no-worker`) accepts tasks over
HTTP (random priorities, some delayed, some whose first try raises and is retried, some
cancelled at a random moment); `asynctask worker` processes run them under
`max_concurrency`. Meanwhile, at seeded random moments: SIGKILL of a worker (a new one is
started), SIGTERM of a worker (graceful; a new one is started), SIGSTOP of a worker for longer
than `stale_after` (a frozen zombie), and database stalls longer than `stale_after` (SIGSTOP of
the wire server). One worker's clock runs ahead and one behind by more than `stale_after`
(time-machine, started from a `sitecustomize` of those processes). Then everything is resumed
and left to drain, and the run is checked against the ground truth `main` wrote:

- lost: submitted, and no document; stuck: not finished when the run ended;
- concurrent duplicates: two runs of one task's `main` at the same time, apart from a frozen
  zombie's (counted apart: its writes are fenced);
- cap overruns: more than `max_concurrency` mains at once (zombies apart);
- cancels lost: a cancel answered "cancelled" after which the task ran or did not end
  cancelled, or answered "running" (stop requested) after which a new attempt started.

Run from the repository root (exit status 1 when any of those counts is not 0):

    python bench/faults.py --seed 1 --duration 180
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]

from apps import free_port, http  # noqa: E402

FINISHED = ("success", "failed", "cancelled")
HEARTBEAT, STALE_AFTER, POLL, CAP = 0.3, 1.0, 0.1, 3
SKEW = 5.0  # seconds ahead and behind: more than stale_after


@dataclass
class Report:
    """What a run did and what it found."""

    seed: int
    submitted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    cancels: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    zombie_overlaps: int = 0
    cap_overruns: int = 0
    most_at_once: int = 0
    cancels_lost: list[str] = field(default_factory=list)
    runs: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.stuck or self.duplicates or self.cap_overruns or self.cancels_lost)

    def lines(self) -> list[str]:
        return [
            f"seed {self.seed}: {self.submitted} tasks submitted, {self.runs} runs of main; finished "
            f"{dict(sorted(self.statuses.items()))}",
            f"faults injected: {dict(sorted(self.faults.items()))}; cancels answered {dict(sorted(self.cancels.items()))}",
            f"lost {len(self.lost)}, stuck {len(self.stuck)}, concurrent duplicates {len(self.duplicates)} "
            f"(zombie overlaps, fenced: {self.zombie_overlaps}), cap overruns {self.cap_overruns} "
            f"(most at once {self.most_at_once} of {CAP}), cancels lost {len(self.cancels_lost)}",
        ] + [f"  {name}: {ids[:10]}" for name, ids in (("lost", self.lost), ("stuck", self.stuck),
                                                      ("duplicates", self.duplicates),
                                                      ("cancels lost", self.cancels_lost)) if ids]


class Fleet:
    """The processes of one run, and what was done to them (times on the monotonic clock)."""

    def __init__(self, folder: Path, truth: Path, rng: random.Random) -> None:
        self.folder, self.truth, self.rng = folder, truth, rng
        self.collection = f"f_{rng.randrange(16**8):08x}"
        self.db_proc: subprocess.Popen | None = None
        self.uri = ""
        self.api_proc: subprocess.Popen | None = None
        self.base = ""
        self.workers: list[subprocess.Popen | None] = []
        #: pid -> [(frozen from, until)] and pid -> when it died.
        self.frozen: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.died: dict[int, float] = {}
        self.stalls: list[tuple[float, float]] = []
        self.lock = threading.Lock()

    # -- starting ---------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCTASK_", "FAULT_"))}
        base.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), DISABLE_STREAM_HANDLER="1",
                    ASYNCTASK_MONGO_URI=self.uri, FAULT_COLLECTION=self.collection, FAULT_LOG=str(self.truth),
                    FAULT_LOG_DIR=str(self.folder / "logs"), FAULT_HEARTBEAT=str(HEARTBEAT),
                    FAULT_STALE_AFTER=str(STALE_AFTER), FAULT_POLL=str(POLL), FAULT_MAX_CONCURRENCY=str(CAP),
                    XDG_RUNTIME_DIR=str(self.folder))
        base.update(extra)
        return base

    def spawn(self, command: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        out = open(self.folder / f"{name}.out", "ab")  # noqa: SIM115 - kept open for the child's life
        return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)

    def start_database(self) -> None:
        self.db_proc = subprocess.Popen([sys.executable, str(TESTS / "mongo_wire.py"), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        assert self.db_proc.stdout is not None
        line = self.db_proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the wire server said {line!r}")
        self.uri = f"mongodb://127.0.0.1:{int(line.split()[1])}/?directConnection=true"

    def start_api(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.api_proc = self.spawn([sys.executable, "-m", "asynctask.cli", "serve", "fault_tasks:api", "--no-worker",
                                    "--bind", f"127.0.0.1:{port}", "--grace", "1"], self.env(), "api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.base}/ping", timeout=1):
                    return
            time.sleep(0.1)
        raise RuntimeError("the API process did not start")

    def start_worker(self, slot: int) -> None:
        """Worker `slot`; slot 0 runs SKEW seconds ahead, slot 1 SKEW behind."""
        extra: dict[str, str] = {}
        if slot in (0, 1):
            skewed = self.folder / f"skew{slot}"
            skewed.mkdir(exist_ok=True)
            offset = SKEW if slot == 0 else -SKEW
            (skewed / "sitecustomize.py").write_text(
                "import datetime, time_machine\n"
                f"time_machine.travel(datetime.datetime.now(datetime.timezone.utc)"
                f" + datetime.timedelta(seconds={offset}), tick=True).start()\n")
            extra["PYTHONPATH"] = os.pathsep.join([str(skewed), str(ROOT), str(TESTS)])
        proc = self.spawn([sys.executable, "-m", "asynctask.cli", "worker", "fault_tasks:api", "--concurrency", "3",
                           "--grace", "0.5"], self.env(**extra), f"worker{slot}")
        while len(self.workers) <= slot:
            self.workers.append(None)
        self.workers[slot] = proc

    # -- faults -----------------------------------------------------------------------------

    def kill(self, slot: int, sig: int, report: Report) -> None:
        proc = self.workers[slot]
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:  # a graceful stop that hangs is a finding too: end it
            report.faults["SIGTERM that did not exit"] += 1
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.died[proc.pid] = time.monotonic()
        report.faults["SIGKILL" if sig == signal.SIGKILL else "SIGTERM"] += 1
        self.start_worker(slot)

    def freeze(self, slot: int, seconds: float, report: Report) -> None:
        proc = self.workers[slot]
        if proc is None or proc.poll() is not None:
            return
        began = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGSTOP)
            time.sleep(seconds)
            os.killpg(proc.pid, signal.SIGCONT)
        self.frozen[proc.pid].append((began, time.monotonic()))
        report.faults["worker frozen"] += 1

    def stall(self, seconds: float, report: Report) -> None:
        assert self.db_proc is not None
        began = time.monotonic()
        os.kill(self.db_proc.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(self.db_proc.pid, signal.SIGCONT)
        self.stalls.append((began, time.monotonic()))
        report.faults["database stall"] += 1

    def stop(self) -> None:
        for proc in [*self.workers, self.api_proc, self.db_proc]:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)


def run(seed: int, duration: float, workers: int = 4, drain: float = 120.0, folder: Path | None = None,
        rate: float = 8.0) -> Report:
    """One seeded run of `duration` seconds of faults, then the drain and the checks."""
    rng = random.Random(seed)
    report = Report(seed)
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faults-")))
        truth = folder / "truth.jsonl"
        fleet = Fleet(folder, truth, rng)
        stack.callback(fleet.stop)
        fleet.start_database()
        fleet.start_api()
        for slot in range(workers):
            fleet.start_worker(slot)
        submitted: list[str] = []
        cancels: list[tuple[str, float, str]] = []  # (task id, answered at, answer)
        pending_cancels: list[tuple[float, str]] = []
        faults: list[threading.Thread] = []
        plan = fault_plan(seed, duration, workers)
        began = time.monotonic()
        while time.monotonic() - began < duration:
            key = f"t{len(submitted):05d}"
            body: dict[str, Any] = {"data": {"key": key, "seconds": round(rng.uniform(0.05, 1.0), 3),
                                             "fail_first": rng.random() < 0.15},
                                    "priority": rng.choice([-10, 0, 0, 0, 5, 20])}
            if rng.random() < 0.2:
                body["delay"] = round(rng.uniform(0.1, 2.0), 2)
            with contextlib.suppress(OSError):
                status, _ = http("POST", f"{fleet.base}/api", body)
                if status == 202:
                    submitted.append(key)
                    if rng.random() < 0.1:
                        pending_cancels.append((time.monotonic() + rng.uniform(0.0, 1.5), key))
            now = time.monotonic()
            for due, task_id in [c for c in pending_cancels if c[0] <= now]:
                pending_cancels.remove((due, task_id))
                with contextlib.suppress(OSError):
                    status, answer = http("DELETE", f"{fleet.base}/api/{task_id}")
                    label = (answer or {}).get("data", {}).get("status") if status in (200, 202) else str(status)
                    report.cancels[str(label)] += 1
                    if status in (200, 202):
                        cancels.append((task_id, time.monotonic(), str(label)))
            if plan and now - began >= plan[0][0] and not any(t.is_alive() for t in faults):
                _, kind, slot, seconds = plan.pop(0)
                if kind == "kill":
                    target: Any = (fleet.kill, (slot, signal.SIGKILL, report))
                elif kind == "term":
                    target = (fleet.kill, (slot, signal.SIGTERM, report))
                elif kind == "freeze":
                    target = (fleet.freeze, (slot, seconds, report))
                else:
                    target = (fleet.stall, (seconds, report))
                thread = threading.Thread(target=target[0], args=target[1], daemon=True)
                thread.start()
                faults.append(thread)
            time.sleep(rng.expovariate(rate))
        for thread in faults:
            thread.join(60)
        report.submitted = len(submitted)
        docs = drain_and_read(fleet, submitted, drain)
        report.runs = check(report, truth, docs, submitted, cancels, fleet)
        (folder / "faults.json").write_text(json.dumps({
            "frozen": fleet.frozen, "died": fleet.died, "stalls": fleet.stalls, "cancels": cancels}))
    return report


def fault_plan(seed: int, duration: float, workers: int) -> list[tuple[float, str, int, float]]:
    """(second of the run, kind, worker slot, how long) of each fault: every kind comes once in
    the first four, then at random; a fault starts only once the one before it is over."""
    rng = random.Random(seed * 7919)
    kinds = ["kill", "term", "freeze", "stall"]
    rng.shuffle(kinds)
    plan, at = [], rng.uniform(1.0, 2.0)
    while at < duration:
        kind = kinds.pop(0) if kinds else rng.choice(["kill", "kill", "term", "freeze", "stall"])
        seconds = rng.uniform(2 * STALE_AFTER, 4 * STALE_AFTER) if kind == "freeze" else \
            rng.uniform(1.5 * STALE_AFTER, 4 * STALE_AFTER)
        plan.append((at, kind, rng.randrange(workers), seconds))
        at += rng.uniform(1.5, 4.0)
    return plan


def drain_and_read(fleet: Fleet, submitted: list[str], drain: float) -> dict[str, dict[str, Any]]:
    """Wait (at most `drain` s) until every submitted task has finished; their documents."""
    from pymongo import MongoClient

    client: MongoClient = MongoClient(fleet.uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
    try:
        collection = client["asynctask_faults"][fleet.collection]
        deadline = time.monotonic() + drain
        while True:
            docs = {doc["task_id"]: doc for doc in collection.find({}, {"task_id": 1, "status": 1, "attempts": 1,
                                                                        "result": 1})}
            waiting = [t for t in submitted if t in docs and docs[t].get("status") not in FINISHED]
            if not waiting or time.monotonic() > deadline:
                return docs
            time.sleep(0.5)
    finally:
        client.close()


def check(report: Report, truth: Path, docs: dict[str, dict[str, Any]], submitted: list[str],
          cancels: list[tuple[str, float, str]], fleet: Fleet) -> int:
    """Fill `report` from the ground truth and the documents; returns how many runs there were."""
    end_of_run = time.monotonic()
    starts: dict[tuple[str, int, int], float] = {}
    runs: list[dict[str, Any]] = []
    for line in truth.read_text().splitlines() if truth.exists() else []:
        event = json.loads(line)
        key = (event["task_id"], event["attempt"], event["pid"])
        if event["event"] == "start":
            starts[key] = event["t"]
        elif key in starts:
            runs.append({"task": key[0], "attempt": key[1], "pid": key[2], "start": starts.pop(key), "end": event["t"]})
    for (task_id, attempt, pid), start in starts.items():  # never ended: its process died
        runs.append({"task": task_id, "attempt": attempt, "pid": pid, "start": start,
                     "end": fleet.died.get(pid, end_of_run)})

    def zombie(run: dict[str, Any], newer: dict[str, Any]) -> bool:
        """`run` was frozen before `newer` started: its worker was judged lost, its writes fenced."""
        return run["attempt"] < newer["attempt"] and any(
            frozen_from < newer["start"] for frozen_from, _ in fleet.frozen.get(run["pid"], []))

    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        by_task[run["task"]].append(run)
    zombies: set[int] = set()
    for task_id, task_runs in by_task.items():
        task_runs.sort(key=lambda r: r["start"])
        for i, first in enumerate(task_runs):
            for second in task_runs[i + 1:]:
                if second["start"] < first["end"]:
                    if zombie(first, second):
                        report.zombie_overlaps += 1
                        zombies.add(id(first))
                    else:
                        report.duplicates.append(task_id)
    # The cap: mains running at once, zombies apart. A run frozen for longer than stale_after
    # holds its slot until its worker may be judged lost: stale_after after its last heartbeat,
    # which came up to a heartbeat interval (and a round trip) before the freeze. From then on
    # its slot is rightly given to another task, and the run (resumed later, fenced) is a zombie.
    def counted_until(run: dict[str, Any]) -> float:
        judged = [began + STALE_AFTER - HEARTBEAT - 0.1 for began, until in fleet.frozen.get(run["pid"], [])
                  if run["start"] < until and began < run["end"] and until - began > STALE_AFTER]
        return min([run["end"], *judged])

    counted = [(r["start"], counted_until(r)) for r in runs if id(r) not in zombies]
    events = sorted([(start, 1) for start, end in counted if end > start] + [(end, -1) for start, end in counted
                                                                              if end > start])
    running = 0
    for _, step in events:
        running += step
        report.most_at_once = max(report.most_at_once, running)
        if running > CAP:
            report.cap_overruns += 1
    for task_id, answered_at, answer in cancels:
        doc = docs.get(task_id) or {}
        later = [r for r in by_task.get(task_id, []) if r["start"] > answered_at]
        if answer == "cancelled" and (later or doc.get("status") != "cancelled"):
            report.cancels_lost.append(task_id)
        elif answer == "running" and (later or doc.get("status") not in FINISHED):
            report.cancels_lost.append(task_id)
    report.lost = [t for t in submitted if t not in docs]
    report.stuck = [t for t in submitted if t in docs and docs[t].get("status") not in FINISHED]
    counts: dict[str, int] = defaultdict(int)
    for task_id in submitted:
        if task_id in docs:
            counts[str(docs[task_id].get("status"))] += 1
    report.statuses = dict(counts)
    report.duplicates = sorted(set(report.duplicates))
    return len(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults (then the drain)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--keep", type=Path, default=None, help="a folder to keep the processes' output in")
    args = parser.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    report = run(args.seed, args.duration, args.workers, folder=args.keep)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
