"""An interrupted sweep is over within seconds, however its main thread is held.

Ctrl-C (SIGINT) or SIGTERM normally unwinds the sweep in its main thread (:func:`.run._end_now`):
the workers are killed, the killed jobs' build folders removed, the cluster closed. Python runs a
signal's handler only when the main thread next runs Python code; a main thread held in a library's
native call, or a close that waits on a peer, would hold the exit too. So the signal also wakes a
watcher thread, at the C level (``signal.set_wakeup_fd``: the signal's number is written to a socket
the moment it arrives): if the sweep has not finished unwinding ``seconds`` later, the watcher runs the same cleanup itself
and ends the process (exit 130 for SIGINT, 143 for SIGTERM, as a shell reports them).

A SIGINT the process was started ignoring (a shell starts background jobs so) stays ignored: that is
the user's choice, and Python then installs no handler, so nothing is written and nothing is watched.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Callable, Iterator

#: how long the main thread has to unwind after the signal before the watcher ends the process
SECONDS = 15.0
_ENDING = {signal.SIGINT: 130, signal.SIGTERM: 143}


@contextlib.contextmanager
def deadline_after_interrupt(cleanup: Callable[[], None], seconds: float = SECONDS) -> Iterator[None]:
    """Within the block, SIGINT or SIGTERM ends the process at most ``seconds`` after it arrives,
    ``cleanup`` run first (by the watcher, when the main thread has not finished by then). Outside the
    main thread (where no signal is delivered) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    try:
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    except ValueError:     # no wakeup fd here (an embedding interpreter): the plain unwinding
        reader.close()
        writer.close()
        yield
        return
    unwound = threading.Event()

    def watch() -> None:
        code = None
        while code is None:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data or unwound.is_set():
                return
            code = next((_ENDING[s] for s in data if s in _ENDING), None)
        if unwound.wait(seconds):
            return
        try:
            cleanup()
        finally:
            os._exit(code)

    watcher = threading.Thread(target=watch, name="bsconv-export-sweep-deadline", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        unwound.set()
        signal.set_wakeup_fd(previous)
        writer.close()          # the watcher reads the end of the stream, unless it is counting down
        watcher.join(timeout=0.5)
        if not watcher.is_alive():
            reader.close()
