"""The time a workflow has left, from the times its jobs took so far.

Snakemake's terminal says "12 of 29 steps (41%) done" after every job; a person waiting for a
benchmark wants to know how long the rest takes. ``TimeLeft`` watches Snakemake's own log
events (which jobs of which rule there are, when each started and finished) and estimates the
remaining time as the jobs still to run, each at the mean measured time of its rule (all
finished jobs' mean for a rule of one job still to run), divided by the parallelism observed
so far. It is an estimate, and says so; the workflow (``workflow/rules/common.smk``) prints it
after each progress line, naming how many jobs it rests on. While a rule with several jobs
still to run has none finished, there is no line: the others say nothing of it (630 run.json
writes of a few milliseconds said "about 4 s left" before the first of 126 training jobs of
a minute each had finished).
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable


def human_duration(seconds: float) -> str:
    """'45 s', '12 min', '2 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


class TimeLeft:
    """Job events in, an estimate of the wall time left out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.rule_of: dict[int, str] = {}
        self.started: dict[int, float] = {}
        self.durations: dict[str, list[float]] = defaultdict(list)
        self.jobs_of_rule: dict[str, int] = {}
        self.first_start: float | None = None

    def observe(self, event: str, fields: dict) -> None:
        """Record one of Snakemake's log events (the others are ignored)."""
        now = self.clock()
        if event == "run_info" and isinstance(fields.get("stats"), dict):
            self.jobs_of_rule = {rule: int(n) for rule, n in fields["stats"].items() if rule != "total"}
        elif event == "job_info" and fields.get("jobid") is not None:
            self.rule_of[int(fields["jobid"])] = str(fields.get("rule_name"))
        elif event == "job_started":
            for job in fields.get("jobs") or []:
                self.started[int(job)] = now
                self.first_start = now if self.first_start is None else self.first_start
        elif event == "job_finished" and fields.get("job_id") is not None:
            job = int(fields["job_id"])
            if job in self.started:
                self.durations[self.rule_of.get(job, "?")].append(now - self.started.pop(job))

    @property
    def measured(self) -> int:
        return sum(len(times) for times in self.durations.values())

    def seconds_left(self, done: int, total: int) -> float | None:
        """The estimate, or None before any job has finished, or while a rule with several
        jobs still to run has none measured."""
        if not self.measured or self.first_start is None or done >= total:
            return None
        now = self.clock()
        every = [t for times in self.durations.values() for t in times]
        overall = sum(every) / len(every)
        mean = {rule: sum(times) / len(times) for rule, times in self.durations.items()}
        if self.jobs_of_rule:
            waiting = {rule: max(n - len(self.durations.get(rule, [])), 0) for rule, n in self.jobs_of_rule.items()}
            if any(n > 1 and rule not in mean for rule, n in waiting.items()):
                return None
            work = sum(n * mean.get(rule, overall) for rule, n in waiting.items())
        else:
            work = (total - done) * overall
        running = [now - t for t in self.started.values()]
        work -= sum(min(elapsed, mean.get(self.rule_of.get(job, "?"), overall))
                    for job, elapsed in zip(self.started, running))
        wall = max(now - self.first_start, 1e-9)
        parallel = max((sum(every) + sum(running)) / wall, 1.0)
        return max(work, 0.0) / parallel

    def line(self, done: int, total: int) -> str | None:
        left = self.seconds_left(done, total)
        if left is None:
            return None
        return (f"stabench: about {human_duration(left)} left (estimated from the {self.measured} jobs "
                f"measured so far)")


class TimeLeftHandler(logging.Handler):
    """A handler on Snakemake's logger: feeds ``TimeLeft`` and writes its line after each
    progress line, to the stream Snakemake writes to (stderr)."""

    def __init__(self, stream=None):
        super().__init__(level=logging.INFO)
        self.stream = stream or sys.stderr
        self.estimate = TimeLeft()

    def emit(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", "") or "")
        if not event:
            return
        self.estimate.observe(event, vars(record))
        if event == "progress":
            text = self.estimate.line(int(record.done), int(record.total))
            if text:
                self.stream.write(text + "\n")
                self.stream.flush()

    @classmethod
    def attach(cls, logger: logging.Logger) -> None:
        """Add one to ``logger`` (never twice in a process)."""
        if not any(isinstance(h, cls) for h in logger.handlers):
            logger.addHandler(cls())
