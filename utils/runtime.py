"""The running process, for scripts and library alike: the errors the library raises (`UsageError`, `Interrupted`),
stopping on signals, the device and precision choice, the one seed helper, the distributed setup, and what a user
reads on the console (escaped file names, progress bars that read well in a log).

Importing this module is cheap (standard library only; torch, NumPy and tqdm are imported where they are used).
"""
import logging
import os
import random
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)


class UsageError(ValueError):
    """Bad user input (a path, a flag, a file). Scripts print it as one line and exit with code 2."""


def warn_ignored(flag, why):
    """The one-line warning for a flag given by the user that has no effect in this run."""
    log.warning("warning: %s has no effect: %s", flag, why)


def display_name(path):
    """A path as people read it: undecodable bytes of a file name shown escaped (`caf\\xe9.png`), so it can be
    printed, drawn and written into UTF-8 files."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def select_device(gpu_id=0):
    """`cuda:<gpu_id>` when CUDA is available, else Apple `mps`, else CPU. Logged once by the caller.

    gpu_id < 0 forces the CPU.
    """
    import torch
    if gpu_id is not None and gpu_id >= 0 and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if gpu_id >= n:
            raise UsageError(f"--gpu_id {gpu_id}: no such GPU (this machine has {n}: 0..{n - 1})")
        return torch.device(f"cuda:{gpu_id}")
    mps = getattr(torch.backends, "mps", None)
    if gpu_id is not None and gpu_id >= 0 and mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed):
    """The one seed helper: Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id):
    """DataLoader worker_init_fn: derive NumPy/random seeds from the worker's torch seed."""
    import numpy as np
    import torch
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def resolve_amp(amp, device):
    """Autocast dtype for `--amp {auto,bf16,fp16,off}` on `device`, or None for fp32.

    auto: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX) and on CUDA GPUs that support it, fp16 on older
    GPUs, fp32 elsewhere (emulated bf16 on a CPU without it is slower than fp32).
    """
    import torch
    if amp == "off" or device.type == "mps":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def busy_cpu_seconds(stat="/proc/stat"):
    """CPU seconds all programs have spent busy since boot (Linux: the "cpu" line of /proc/stat, in USER_HZ
    ticks), or None where there is no such file."""
    try:
        with open(stat) as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class FairThreads:
    """A fair neighbour on a shared machine: every CHECK_S seconds (`adjust`, called once a step), the CPU threads
    become the cores other programs leave free, from one up to the threads the run started with.

    OpenMP's threads spin while they wait for work; beside two busy single-core jobs on 2 cores, the demo's
    training with 2 threads took x6.2 its idle time, with 1 thread x2.3 (docs/speed.md, "A busy machine"). Others'
    use is all busy CPU time (busy_cpu_seconds) less this process's, over the last interval: no sampling pause."""

    CHECK_S = 5.0
    FIRST_LOOK_S = 0.25  # at the start, while this process is idle: the data loading and the bank fit follow too

    def __init__(self, clock=time.monotonic, busy=busy_cpu_seconds, cores=None, first_look_s=FIRST_LOOK_S):
        import torch
        self.most, self.clock, self.busy = torch.get_num_threads(), clock, busy
        self.cores = cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        self.last = self._sample()
        if first_look_s:
            time.sleep(first_look_s)
            self.adjust(every_s=0.0)

    def _sample(self):
        return self.clock(), self.busy(), time.process_time()

    def adjust(self, every_s=None):
        """Set torch's threads for the next `every_s` seconds; returns the count (unchanged between checks)."""
        import torch
        every_s = self.CHECK_S if every_s is None else every_s
        now = self._sample()
        seconds = now[0] - self.last[0]
        if seconds <= 0 or seconds < every_s or now[1] is None or self.last[1] is None:
            return torch.get_num_threads()
        others = max(0.0, (now[1] - self.last[1]) - (now[2] - self.last[2])) / seconds  # cores busy elsewhere
        self.last = now
        threads = max(1, min(self.most, round(self.cores - others)))
        if threads != torch.get_num_threads():
            log.info("%d CPU thread%s: other programs use %.1f of %d cores", threads, "s"[:threads != 1], others,
                     self.cores)
            torch.set_num_threads(threads)
        return threads

    def restore(self):
        """The threads the run started with (the process goes on: a test, the demo's evaluation)."""
        import torch
        torch.set_num_threads(self.most)


def cpu_has_native_bf16():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def distributed_env():
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) when not distributed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def init_distributed(gpu_id):
    """The training device; under torchrun (WORLD_SIZE/RANK/LOCAL_RANK set) also the process group: NCCL on
    GPUs, gloo on CPU."""
    _, local_rank, world = distributed_env()
    if world == 1:
        return select_device(gpu_id)
    import torch
    import torch.distributed as dist
    use_cuda = torch.cuda.is_available() and gpu_id >= 0
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device(f"cuda:{local_rank}")
    return torch.device("cpu")


class Interrupted(BaseException):
    """A run stopped by SIGINT / SIGTERM; `exit_code` is what a shell expects (130 / 143).

    A BaseException, as KeyboardInterrupt is: raised by a signal handler at any line, it must not be taken for an
    error by `except Exception` (a loader's "not a checkpoint", logging's "--- Logging error ---" and going on)."""

    def __init__(self, signum, saved=""):
        self.signum, self.saved = signum, saved
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f"; {saved}" if saved else ""))

    @property
    def exit_code(self):
        return 128 + self.signum


class StopOnSignal:
    """Turns SIGINT / SIGTERM into a stop request while `armed`, into `Interrupted` otherwise."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, armed=True):
        self.armed, self.signum, self._previous = armed, None, {}

    @property
    def requested(self):
        return self.signum is not None

    def interrupted(self, saved=""):
        # under DDP a rank may stop because another rank was signalled: SIGTERM is what launchers send
        return Interrupted(self.signum or signal.SIGTERM, saved)

    def _handle(self, signum, frame):
        if self.armed and self.signum is None:
            self.signum = signum  # the loop stops after the current step
            return
        raise Interrupted(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


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
    stderr) is not a terminal. Explicit `mininterval` / `maxinterval` win.

    In a log file tqdm would write a carriage-return frame at every refresh (hundreds of kilobytes in a long run);
    here each frame is one plain line, and a bar that is not kept (leave=False, one per training epoch) first
    shows after LOG_INTERVAL_S, so short epochs add no line: a 10-minute CPU training writes about 6 kB of log.

    >>> import io
    >>> log = io.StringIO()
    >>> sum(progress(range(3), desc="demo", file=log))
    3
    >>> "\\r" in log.getvalue(), log.getvalue().splitlines()[-1].startswith("demo: 100%")
    (False, True)
    """
    from tqdm import tqdm

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
