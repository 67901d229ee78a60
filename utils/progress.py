"""Progress bars that read well both in a terminal and in a log file.

In a terminal: tqdm as usual. When the stream is not a terminal (redirected to a file, a pipe, CI), tqdm would
write a carriage-return frame at every refresh (hundreds of kilobytes in a long run); here it refreshes at most
every LOG_INTERVAL_S seconds and each frame is written as one plain line (no '\\r', no padding). A bar that is
not kept (leave=False, as the one of each training epoch) first shows after LOG_INTERVAL_S, so short epochs add
no line at all: a 10-minute CPU training writes about 6 kB of log.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> sum(progress(range(3), desc="demo", file=log))
    3
    >>> "\\r" in log.getvalue(), log.getvalue().splitlines()[-1].startswith("demo: 100%")
    (False, True)
"""
import sys

from tqdm import tqdm

LOG_INTERVAL_S = 10.0  # seconds between two lines of a bar in a log


class _Lines:
    """A text stream wrapper: each tqdm frame becomes one line; blank frames (clearing) and a repeat of the
    last line (tqdm redraws the final frame when it closes) are dropped."""

    def __init__(self, stream):
        self.stream, self.last = stream, None

    def write(self, text):
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.stream.write(line + "\n")
            self.last = line

    def flush(self):
        self.stream.flush()


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress(iterable=None, **kwargs):
    """`tqdm(iterable, **kwargs)`, throttled to a line every LOG_INTERVAL_S seconds when `file` (default
    stderr) is not a terminal. Explicit `mininterval` / `maxinterval` win."""
    stream = kwargs.pop("file", None) or sys.stderr
    if _is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, kwargs["mininterval"]))
    kwargs.setdefault("ascii", True)  # no block characters in a log
    kwargs.setdefault("dynamic_ncols", False)
    if not kwargs.get("leave", True):
        kwargs.setdefault("delay", LOG_INTERVAL_S)  # a transient bar (one per epoch): nothing if it ends sooner
    return tqdm(iterable, file=_Lines(stream), **kwargs)
