"""A progress bar for long store work: bytes, rate, and what dedup saved."""

from __future__ import annotations

import sys
import threading
from typing import Any


class Progress:
    """A rich bar on stderr for transfers of 8 MiB or more, only on a terminal.

    ``enabled`` is the caller's wish (the CLI turns it off for ``--json``);
    scripts and logs, whose stderr is not a terminal, never see a bar.
    """

    def __init__(self, label: str, total: int, *, enabled: bool) -> None:
        self._bar: Any = None
        self._lock = threading.Lock()
        self.saved = 0
        if not enabled or not sys.stderr.isatty() or total < (8 << 20):
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn(f"[bold]{label}[/]"), BarColumn(), DownloadColumn(),
            TransferSpeedColumn(), TextColumn("{task.fields[saved]}"), TimeRemainingColumn(),
            transient=False,
            console=Console(file=sys.stderr),  # the terminal asked about; stdout may be data
        )
        self._bar.start()
        self._task = self._bar.add_task(label, total=total, saved="")

    def advance(self, size: int, *, saved: int = 0) -> None:
        if self._bar is None:
            return
        with self._lock:
            self.saved += saved
            text = f"dedup saved {self.saved / 2**20:.0f} MiB" if self.saved else ""
            self._bar.update(self._task, advance=size, saved=text)

    def close(self, message: str = "") -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
