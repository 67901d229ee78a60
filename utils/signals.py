"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, write the resumable state, exit 130 / 143.

    with StopOnSignal() as stop:
        for batch in loader:
            ...one step...
            if stop.requested:      # the training loop's check point (after a whole step)
                save_resume_state(); raise stop.interrupted()

Before the loop is armed, or at a second signal (the user insists), `Interrupted` is raised at once.
Scripts catch `Interrupted`, print one line and return `exit_code` (128 + the signal number), no traceback.
"""
import signal
import threading


class Interrupted(Exception):
    """A run stopped by SIGINT / SIGTERM; `exit_code` is what a shell expects (130 / 143)."""

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
