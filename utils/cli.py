"""The scripts' side of the command line (only train.py, detect.py, evaluate.py and bench.py import it): the quiet
start, exit codes, flag types and the flags the scripts share.

Exit codes: 0 done, 2 bad input (`UsageError`, a missing file, a bad value; one line, no traceback), 1 an OS
error while writing (the outputs stay whole), 130 / 143 stopped by SIGINT / SIGTERM (`Interrupted`).

Importing this module is cheap (standard library only), so a script calls `exit_quietly_on_signals` before its
heavy imports.
"""
import argparse
import atexit
import math
import os
import signal
import sys

from utils.config import INFERENCE_AMP, INFERENCE_BS, Config
from utils.runtime import Interrupted, StopOnSignal, UsageError

AMP_CHOICES = ("auto", "bf16", "fp16", "off")  # the scripts' --amp


def exit_quietly_on_signals(script, module_name):
    """Ctrl-C or SIGTERM while a script still imports (torch takes seconds): one line and 128 + n, no traceback.

    Nothing has been written at that point, so the process just ends; `main()` then installs its own handling
    (StopOnSignal), which replaces these handlers while it works and restores them after: once it has returned, a
    signal is the same one line. The interpreter's last steps (a second with torch) ignore signals: Python would
    put back the default action, and the process would die without a word, its work done. Only when run as a
    script: importing one in a test changes no signal handling.
    """
    if module_name != "__main__":
        return

    def stop(signum, frame):
        os.write(2, f"{script}: stopped by {signal.Signals(signum).name} before or after its work\n".encode())
        os._exit(128 + signum)

    def ignore():  # run after the exit functions registered later (torch's), and from then to the end
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # Python leaves an ignored signal ignored as it ends

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    atexit.register(ignore)


def report_error(script, e):
    """Print an error that ends a script as one line; returns the exit code: 2 for bad input (UsageError, a
    missing file, a bad value), 1 for an OS error while writing (disk full, file-size limit, permissions ...)."""
    code = 2 if isinstance(e, (UsageError, FileNotFoundError, ValueError)) else 1
    if isinstance(e, OSError) and e.filename is None and e.strerror:
        e = f"{e.strerror} while writing the outputs"
    print(f"{script}: error: {e}", file=sys.stderr)
    return code


def positive_int(s):
    """argparse type: an integer > 0."""
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def add_inference_flags(parser, bs_help, pair_help):
    """The flags detect.py and evaluate.py share: which pair and where, the device, precision and batch size."""
    parser.add_argument("--base_model_name", default=None,
                        help="checkpoint pair name without extension (loads <name>.pt and <name>_seg.pt)" + pair_help)
    parser.add_argument("--checkpoint_path", default=Config.checkpoint_path, help="folder holding the checkpoint pair")
    parser.add_argument("--gpu_id", type=int, default=Config.gpu_id, help="CUDA device index (CPU when CUDA is absent)")
    parser.add_argument("--amp", choices=AMP_CHOICES, default=INFERENCE_AMP,
                        help="mixed precision for inference (scores agree with fp32 within 0.01)")
    parser.add_argument("--bs", type=positive_int, default=INFERENCE_BS, help=bs_help)


def add_max_pixels_flag(parser):
    parser.add_argument("--max_pixels", type=positive_int, default=Config.max_pixels,
                        help="refuse images with more pixels than this (read from the header, before decoding)")


def add_target_flag(parser, help_suffix=""):
    """--target_false_reject, shared by train.py and evaluate.py."""
    parser.add_argument("--target_false_reject", type=false_reject_rate, default=Config.target_false_reject,
                        help="share of good parts the OK/NG threshold may call NG (docs/thresholds.md)"
                             + help_suffix)


SCALE_HELP = ("auto = each image at its own aspect, one zoom for all that brings the training images' median area "
              "within (1.5 --size)^2 to (2.5 --size)^2 px (docs/large-images.md); square = each image resized to --size x --size (the "
              "paper); native = the images' own pixels; N = resized so that the longer side is N px, aspect kept. "
              "auto / native / N train on random --size crops, and detect.py / evaluate.py cover the whole image with "
              "overlapping tiles (stored in the checkpoint)")


def scale_arg(s):
    """argparse type of --scale: "auto", "square", "native" or an integer N >= 32 (the longer side in pixels)."""
    if s in ("auto", "square", "native"):
        return s
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto, square, native or a longer side in pixels, got {s}") \
            from None
    if v < 32:
        raise argparse.ArgumentTypeError(f"a longer side of at least 32 pixels, got {s}")
    return v


MAX_SIZE = 8192  # a larger --size cannot be held in memory as training images (and is always a typo)


def size_arg(s):
    """argparse type: an image side, a positive multiple of 32, at most MAX_SIZE."""
    v = positive_int(s)
    if v % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (the U-Net pools 5 times), got {s}")
    if v > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIZE} pixels, got {s}")
    return v


def given(argv, flag):
    """True when `flag` was typed in `argv` (`--flag v` or `--flag=v`), not just left at its default."""
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def positive_float(s):
    """argparse type: a finite number > 0."""
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def fraction(s):
    """argparse type: a number in [0, 1)."""
    v = float(s)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {s}")
    return v


def probability(s):
    """argparse type: a probability or share in [0, 1]."""
    v = float(s)
    if not 0.0 <= v <= 1.0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {s}")
    return v


def false_reject_rate(s):
    """argparse type: a rate in (0, 0.5), e.g. 0.02 for 2% of good parts called NG."""
    v = float(s)
    if not 0 < v < 0.5:
        raise argparse.ArgumentTypeError(f"must be a rate in (0, 0.5), e.g. 0.02 for 2%, got {s}")
    return v


class ScriptExit:
    """A script's main as a block, and its exit code after it:

        with ScriptExit("detect.py") as outcome:   # bad input: 2; a failed write: 1; a signal: 128 + n
            run(args, outcome.stop)
        return outcome.code

    The block runs under StopOnSignal (unarmed; the work may arm it). It ends with code 0, or one line for an
    error of `errors` (report_error) or a signal (Interrupted), never a traceback; other exceptions pass.

    armed: from the block's first line to the exit code a first signal only asks the work to stop (it looks at
    `stop.requested` between its steps): no signal is raised where nothing catches it (in the handlers'
    installation or restoration) or where it would be taken for an error."""

    def __init__(self, script, errors=(UsageError, OSError, ValueError), armed=False):
        self.script, self.errors, self.code, self.stop = script, errors, 0, StopOnSignal(armed=armed)

    def __enter__(self):
        self.stop.__enter__()
        return self

    def __exit__(self, kind, e, tb):
        self.stop.__exit__(kind, e, tb)
        if isinstance(e, self.errors):
            self.code = report_error(self.script, e)
        elif isinstance(e, Interrupted):
            print(f"{self.script}: {e}", file=sys.stderr)
            self.code = e.exit_code
        return e is None or self.code != 0
