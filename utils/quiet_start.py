"""Ctrl-C or SIGTERM while a script is still importing (torch takes seconds): one line and 128 + n, no traceback.

Standard library only, so a script can call it before its heavy imports:

    from utils.quiet_start import exit_quietly_on_signals
    exit_quietly_on_signals("train.py", __name__)

Nothing has been written yet at that point, so the process just ends. `main()` then installs its own handling
(utils.cli.StopOnSignal), which replaces these handlers. Only when run as a script (`__name__ == "__main__"`):
importing a script in a test changes no signal handling.
"""
import os
import signal


def exit_quietly_on_signals(script, module_name):
    if module_name != "__main__":
        return

    def stop(signum, frame):
        os.write(2, f"{script}: stopped by {signal.Signals(signum).name} while starting\n".encode())
        os._exit(128 + signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
