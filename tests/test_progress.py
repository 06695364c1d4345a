"""The progress line: redraw rate on a terminal, a bounded number of lines in a log.

Every test drives a fake clock and a fake stream: no sleeps, no real terminal.
"""

from __future__ import annotations

import io

import pytest

from hpcflow.report.progress import Progress, format_seconds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_redraws_in_place_at_most_ten_times_a_second():
    clock, out = Clock(), Terminal()
    progress = Progress(1000, out, clock=clock, width=200)
    assert progress.interactive
    for done in range(1000):  # 1000 updates over 2 s: at most ~20 redraws
        clock.now += 0.002
        progress.update(done, 4)
    redraws = out.getvalue().count("\r")
    assert 15 <= redraws <= 21
    assert "\n" not in out.getvalue()  # one line, redrawn
    last = out.getvalue().rsplit("\r", 1)[1]
    assert "/1,000 done" in last and "4 running" in last and "ETA" in last
    progress.close("succeeded")
    assert out.getvalue().endswith("\x1b[K\n")
    assert "succeeded: 999/1,000 done" in out.getvalue().rsplit("\r", 1)[1]


def test_terminal_line_never_wraps():
    clock, out = Clock(), Terminal()
    progress = Progress(10**9, out, clock=clock, width=30)
    clock.now += 1
    progress.update(123_456_789, 1024, 5, 6)
    drawn = out.getvalue().split("\r")[1].removesuffix("\x1b[K")
    assert 0 < len(drawn) <= 29


def test_log_prints_each_tenth_of_the_tasks():
    clock, out = Clock(), io.StringIO()
    progress = Progress(1000, out, clock=clock)
    assert not progress.interactive
    for done in range(1, 1001):  # fast: 1000 tasks in 1 s
        clock.now += 0.001
        progress.update(done, 2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("[hpcflow] 100/1,000 done")
    assert lines[-1].startswith("[hpcflow] 1,000/1,000 done")


def test_log_prints_once_a_minute_when_slow():
    clock, out = Clock(), io.StringIO()
    progress = Progress(10**6, out, clock=clock)
    for second in range(1, 601):  # 10 minutes, a call each second, few tasks finish
        clock.now += 1
        progress.update(second, 8)
    assert len(out.getvalue().splitlines()) == 10
    progress.close("stopped")
    progress.close("stopped")  # idempotent
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("[hpcflow] stopped: 600/1,000,000 done")
    assert "0:10:00 elapsed" in lines[-1]


def test_failures_and_skips_count_towards_the_tenths_and_show():
    clock, out = Clock(), io.StringIO()
    progress = Progress(10, out, clock=clock)
    clock.now += 1
    progress.update(0, 0, failed=1)
    clock.now += 1
    progress.update(0, 0, failed=1, skipped=3)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "1 failed, 3 skipped" in lines[1]


def test_eta_from_the_rate_so_far():
    clock, out = Clock(), io.StringIO()
    progress = Progress(100, out, clock=clock)
    clock.now += 10
    progress.update(50, 4)  # half done in 10 s: 10 s to go
    assert "0:00:10 elapsed, ETA 0:00:10" in out.getvalue()


def test_a_resume_counts_only_new_work_in_the_eta_and_the_tenths():
    clock, out = Clock(), io.StringIO()
    progress = Progress(100, out, clock=clock, already=80)
    clock.now += 5
    progress.update(85, 4)  # not yet the next tenth after 80
    assert out.getvalue() == ""
    clock.now += 5
    progress.update(90, 4)  # 10 more in 10 s, 10 to go
    assert out.getvalue().startswith("[hpcflow] 90/100 done") and "ETA 0:00:10" in out.getvalue()


def test_empty_run_and_broken_stream():
    Progress(0, io.StringIO(), clock=Clock()).close("succeeded")

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("EPIPE")

    clock = Clock()
    progress = Progress(10, Broken(), clock=clock)
    clock.now += 120
    progress.update(5, 1)  # a broken log never stops the run
    progress.close("failed")


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (65.9, "0:01:05"),
                                           (43200, "12:00:00"), (2 * 86400 + 3723, "2d 01:02:03")])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text
