"""Tests for utils/cli.py: progress bars in a log (not a terminal) write plain lines, throttled; the quiet start."""
import io

from utils.runtime import LOG_INTERVAL_S, progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_plain_lines_throttled():
    log = io.StringIO()
    bar = progress(range(1000), desc="epoch 1/1", file=log)
    assert bar.mininterval == LOG_INTERVAL_S  # a line every 10 s at most, instead of every 0.1 s
    list(bar)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == len(set(lines))  # the final frame once
    assert lines[-1].startswith("epoch 1/1: 100%|##########| 1000/1000")


def test_explicit_interval_wins_and_leave_false_writes_no_blank_line():
    log = io.StringIO()
    bar = progress(range(3), file=log, mininterval=0, leave=False)
    assert bar.mininterval == 0 and bar.maxinterval == 10.0
    list(bar)
    assert log.getvalue().count("\n") == len([x for x in log.getvalue().splitlines() if x.strip()])


def test_short_transient_bars_write_nothing_to_a_log():
    log = io.StringIO()
    for epoch in range(50):  # 50 short epochs: no line each (they end before LOG_INTERVAL_S)
        list(progress(range(4), desc=f"epoch {epoch + 1}/50", file=log, leave=False))
    assert log.getvalue() == ""


def test_a_terminal_gets_tqdm_unchanged():
    tty = Terminal()
    bar = progress(range(3), file=tty)
    assert bar.mininterval == 0.1 and bar.maxinterval == 10.0  # tqdm's defaults
    list(bar)
    assert "\r" in tty.getvalue()
