"""The time-left estimate the workflow prints after each progress line (stabench/eta.py),
driven with Snakemake's own event names and a fake clock, where the answer is known."""

from __future__ import annotations

import io
import logging

from stabench.eta import TimeLeft, TimeLeftHandler, human_duration


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_nothing_is_estimated_before_a_job_finished():
    clock = Clock()
    left = TimeLeft(clock)
    left.observe("run_info", {"stats": {"train": 4, "total": 4}})
    left.observe("job_info", {"jobid": 1, "rule_name": "train"})
    left.observe("job_started", {"jobs": [1]})
    clock.t = 5
    assert left.seconds_left(0, 4) is None and left.line(0, 4) is None


def test_per_rule_means_and_parallelism():
    """Two cores, train jobs of 60 s run two at a time, a report of 2 s at the end: after the
    first two, two train jobs and the report remain, the report estimated from the train mean
    (no report has finished): (2 x 60 + 60) / 2 = 90 s."""
    clock = Clock()
    left = TimeLeft(clock)
    left.observe("run_info", {"stats": {"train": 4, "report": 1, "total": 5}})
    for job in (1, 2, 3, 4):
        left.observe("job_info", {"jobid": job, "rule_name": "train"})
    left.observe("job_info", {"jobid": 5, "rule_name": "report"})
    left.observe("job_started", {"jobs": [1, 2]})
    clock.t = 60
    left.observe("job_finished", {"job_id": 1})
    left.observe("job_finished", {"job_id": 2})
    assert left.seconds_left(2, 5) == (2 * 60 + 60) / 2  # the report is estimated from the train mean
    left.observe("job_started", {"jobs": [3, 4]})
    clock.t = 90  # half-way through jobs 3 and 4: 2 x 30 s of them and the report left, two at a time
    assert left.seconds_left(2, 5) == (2 * 30 + 60) / 2


def test_no_estimate_while_a_rule_of_many_jobs_has_none_measured():
    """630 spec writes of 10 ms finish before the first of 126 training jobs: their mean says
    nothing of training, so there is no line until a training job has finished."""
    clock = Clock()
    left = TimeLeft(clock)
    left.observe("run_info", {"stats": {"run_spec": 3, "train": 2, "report": 1, "total": 6}})
    for job, rule in enumerate(["run_spec"] * 3 + ["train"] * 2 + ["report"]):
        left.observe("job_info", {"jobid": job, "rule_name": rule})
    for job in (0, 1, 2):
        left.observe("job_started", {"jobs": [job]})
        clock.t += 0.01
        left.observe("job_finished", {"job_id": job})
    assert left.seconds_left(3, 6) is None
    left.observe("job_started", {"jobs": [3]})
    clock.t += 60
    left.observe("job_finished", {"job_id": 3})
    assert left.seconds_left(4, 6) is not None and left.seconds_left(4, 6) > 60  # one train job + the report


def test_the_handler_writes_one_line_after_a_progress_line():
    clock = Clock()
    stream = io.StringIO()
    handler = TimeLeftHandler(stream)
    handler.estimate = TimeLeft(clock)
    log = logging.getLogger("stabench-test-eta")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        log.info("", extra={"event": "job_info", "jobid": 7, "rule_name": "train"})
        log.info("", extra={"event": "job_started", "jobs": [7]})
        clock.t = 30
        log.info("", extra={"event": "job_finished", "job_id": 7})
        log.info("", extra={"event": "progress", "done": 1, "total": 3})
        log.info("", extra={"event": "progress", "done": 3, "total": 3})  # done: nothing left to say
    finally:
        log.removeHandler(handler)
    assert stream.getvalue() == "stabench: about 60 s left (estimated from the 1 jobs measured so far)\n"


def test_human_durations():
    assert [human_duration(s) for s in (5, 89.4, 600, 7500)] == ["5 s", "89 s", "10 min", "2 h 05 min"]
