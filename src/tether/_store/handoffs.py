"""Prompt GIL hand-offs while Tether moves bytes beside threads that run Python.

An ingest or a load passes the GIL between its threads (reading, cutting,
hashing, writing) hundreds of times per second, and each time one of them gives
it up for a system call or a native call, it must take it back. Beside a thread
running Python flat out (a training loop logging a checkpoint from a background
thread, a server's event loop answering requests while a new version loads), that
thread keeps the GIL until the interpreter's switch interval (5 ms by default)
forces it to let go: every hand-off waited up to 5 ms. 128 MB logged in 4.1 s
against 0.43 s alone (10x, when the busy thread's own core explains 2x), loaded
in 1.24 against 0.28 s; with the interval at 0.5 ms while Tether works, 1.0 and
0.48 s (``bench/bench_busy.py``).

So while a log, load, download or verify runs, or ``open_file`` fetches chunks,
in a program with threads of its own, the interval is lowered to 0.5 ms (never
raised) and put back when the last one ends, unless the program changed it
meanwhile. It only matters when threads contend for the GIL; the program's busy
thread then hands over sooner, for much less time. A program without threads of
its own (Tether's, named ``tether-``, do not count) keeps its interval: there
Tether's threads only contend with each other, and a 2 GB load ran no faster
either way (ten interleaved rounds, medians 2.16 and 2.12 s).
``TETHER_SWITCH_INTERVAL`` sets another interval in seconds; ``0`` leaves the
interpreter's alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

DEFAULT = 0.0005

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_users = 0
_saved: float | None = None  # the program's interval, while ours is set
_ours: float | None = None


def _wanted() -> float | None:
    text = os.environ.get("TETHER_SWITCH_INTERVAL", "").strip()
    if not text:
        return DEFAULT
    try:
        value = float(text)
    except ValueError:
        return DEFAULT  # a typo must not stop a transfer; the default is harmless
    return value if value > 0 else None


def _program_threads() -> bool:
    """Whether threads other than this one and Tether's own are running."""
    me = threading.current_thread()
    return any(thread is not me and not thread.name.startswith("tether-")
               for thread in threading.enumerate())


@contextlib.contextmanager
def prompt_handoffs() -> Iterator[None]:
    """Lower the interpreter's switch interval for the duration (see the module)."""
    global _users, _saved, _ours
    entered = False
    try:
        with _lock:
            if _users == 0 and _program_threads():
                wanted = _wanted()
                current = sys.getswitchinterval()
                if wanted is not None and wanted < current:
                    sys.setswitchinterval(wanted)
                    _saved, _ours = current, sys.getswitchinterval()
            _users += 1
            entered = True
        yield
    finally:
        if entered:
            _leave()


def _leave() -> None:
    """Count one use out, putting the program's interval back after the last. A Ctrl-C
    while waiting for the lock must not skip that (the interval would stay lowered
    for the process's life): the wait is taken again, and the interrupt raised after."""
    global _users, _saved, _ours
    interrupted: BaseException | None = None
    while True:
        try:
            _lock.acquire()
        except KeyboardInterrupt as stop:
            interrupted = stop
            continue
        break
    try:
        _users -= 1
        if _users == 0 and _saved is not None:
            if sys.getswitchinterval() == _ours:  # the program left it to us
                sys.setswitchinterval(_saved)
            _saved = _ours = None
    finally:
        _lock.release()
    if interrupted is not None:
        raise interrupted


def _after_fork_in_child() -> None:
    """A child forked while a transfer ran in another thread has no thread to count it
    out: start from nothing, with the program's interval back."""
    global _lock, _users, _saved, _ours
    if _saved is not None and sys.getswitchinterval() == _ours:
        sys.setswitchinterval(_saved)
    _lock, _users, _saved, _ours = threading.Lock(), 0, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def during(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run inside ``prompt_handoffs``. A wrapper of this package's own, not
    contextlib's decorator: warnings point at the first frame outside Tether
    (_warnings.py), and contextlib's frame would have been taken for the caller's."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with prompt_handoffs():
            return function(*args, **kwargs)

    return wrapper
