"""Ctrl-C and `kill PID` for the commands that promise a clean stop.

A process started from a non-interactive background job (`nohup … &`, a CI
runner, a service manager) inherits SIGINT as *ignored*, and Python then
installs no handler of its own: Ctrl-C, or a test's SIGINT, would do nothing.
So a command that promises Ctrl-C behaviour installs its handlers itself,
for SIGINT and SIGTERM alike, and puts the previous ones back when it ends.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def interrupt_on_stop_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise KeyboardInterrupt (only the main thread can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        stop_signal: signal.signal(stop_signal, _raise_keyboard_interrupt)
        for stop_signal in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for stop_signal, handler in previous.items():
            signal.signal(stop_signal, handler)
