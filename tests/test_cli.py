"""Tests for utils/cli.py: progress bars in a log (not a terminal) write plain lines, throttled; the quiet start."""
import io
import re
from pathlib import Path

import pytest

from utils.cli import be_a_fair_neighbour
from utils.runtime import LOG_INTERVAL_S, progress

ROOT = Path(__file__).resolve().parents[1]


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


def test_a_script_sets_a_passive_wait_policy_unless_the_user_chose_one():
    env = {}
    be_a_fair_neighbour("__main__", env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    be_a_fair_neighbour("__main__", env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {}
    be_a_fair_neighbour("detect", env)  # imported (a test): the environment is left alone
    assert env == {}


@pytest.mark.parametrize("script", ["train.py", "detect.py", "evaluate.py", "bench.py"])
def test_each_script_sets_the_policy_before_torch_can_be_imported(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the call comes before every import but the
    standard-library-only utils.cli and utils.runtime."""
    lines = (ROOT / script).read_text().splitlines()
    call = lines.index("be_a_fair_neighbour(__name__)  # before torch: OpenMP threads that sleep while they wait")
    imports = [i for i, line in enumerate(lines) if re.match(r"(import|from) ", line)
               and not line.startswith(("from utils.cli import", "from utils.runtime import"))]
    assert imports and call < min(imports)
