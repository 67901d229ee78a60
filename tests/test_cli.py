"""Tests for utils/cli.py and utils/runtime.py: progress bars in a log (not a terminal) write plain lines, throttled;
the quiet start and end; signals in an armed ScriptExit; the threads of a fair neighbour."""
import io
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT
from utils.cli import ScriptExit
from utils.runtime import LOG_INTERVAL_S, FairThreads, Interrupted, busy_cpu_seconds, progress


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


class Machine:
    """A fake clock and /proc/stat: `others` cores busy besides this process (busy() adds our own CPU time)."""

    def __init__(self, others):
        self.t, self.others, self.elsewhere, self.ours0 = 0.0, others, 0.0, time.process_time()

    def advance(self, seconds):
        self.t += seconds
        self.elsewhere += self.others * seconds

    def clock(self):
        return self.t

    def busy(self):
        return self.elsewhere + (time.process_time() - self.ours0)


def test_fair_threads_leave_other_programs_their_cores_and_come_back():
    start = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        machine = Machine(others=2.0)
        fair = FairThreads(machine.clock, machine.busy, cores=2, first_look_s=0)
        machine.advance(1.0)
        assert fair.adjust() == 2  # within the first CHECK_S seconds: unchanged
        machine.advance(FairThreads.CHECK_S)
        assert fair.adjust() == 1 and torch.get_num_threads() == 1  # two busy jobs on 2 cores: one thread
        machine.others = 0.0  # the jobs end
        machine.advance(FairThreads.CHECK_S)
        assert fair.adjust() == 2  # an idle machine gets every thread back, never more than the run began with
        torch.set_num_threads(1)
        fair.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(start)


def test_fair_threads_without_proc_stat_change_nothing():
    start = torch.get_num_threads()
    fair = FairThreads(lambda: 100.0, lambda: None, cores=2, first_look_s=0)
    assert fair.adjust() == start


def test_busy_cpu_seconds_reads_the_cpu_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n")
    assert busy_cpu_seconds(stat) == pytest.approx(150 / os.sysconf("SC_CLK_TCK"))  # idle and iowait left out
    assert busy_cpu_seconds(tmp_path / "none") is None


LAST_MOMENT = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from utils.cli import exit_quietly_on_signals
exit_quietly_on_signals("x.py", "__main__")

class Late:  # dropped while the interpreter ends, after the atexit functions
    def __del__(self):
        os.kill(os.getpid(), signal.SIG{name})
        time.sleep(0.2)

late = Late()
"""


@pytest.mark.parametrize("name", ["INT", "TERM"])
def test_a_signal_while_a_script_ends_changes_nothing(name):
    """Once main() has returned, the work is done: a signal in the interpreter's last steps is ignored (exit 0)
    instead of killing the process without a word (Python puts back the default action as it ends)."""
    res = subprocess.run([sys.executable, "-c", LAST_MOMENT.format(name=name), str(ROOT)], capture_output=True,
                         text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_an_armed_script_exit_turns_no_signal_into_a_traceback():
    """ScriptExit(armed=True): a signal while its handlers are installed or restored only asks the work to stop;
    Interrupted is a BaseException, so `except Exception` (logging's handlers, a loader) never swallows it."""
    assert not issubclass(Interrupted, Exception)
    with ScriptExit("x.py", armed=True) as outcome:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a second one stops at once
    assert outcome.code == 130 and outcome.stop.requested
    with ScriptExit("x.py", armed=True) as outcome:
        os.kill(os.getpid(), signal.SIGINT)
    assert outcome.code == 0 and outcome.stop.requested  # the work ended first: nothing left to stop
