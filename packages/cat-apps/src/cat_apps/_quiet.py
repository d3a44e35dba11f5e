"""``--quiet`` without silence: progress bars render into a buffer instead of the terminal, and one
plain line with the latest state goes to stderr every ``CAT_QUIET_PROGRESS_S`` seconds (default
60), so that a long run in a log or beside other work still says how far it is. A run shorter
than that prints nothing extra. Anything else written to stderr (warnings) passes straight through.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Any

DEFAULT_INTERVAL_S = 60.0
_BAR = re.compile(r"\|[^|]*\|")  # tqdm's bar glyphs between the percentage and the counts
_ESC = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def interval_s() -> float:
    try:
        return max(0.05, float(os.environ.get("CAT_QUIET_PROGRESS_S", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


class _Sink:
    """Stands in for sys.stderr: keeps the last progress-bar state, passes other text through."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.latest = ""
        self.encoding = getattr(real, "encoding", "utf-8") or "utf-8"

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # tqdm asks for the terminal width through it: there is none
        raise OSError("the --quiet progress sink has no file descriptor")

    def isatty(self) -> bool:
        return False

    def write(self, s: str) -> int:
        if "\r" in s or "\x1b[" in s:  # a bar redrawing itself
            for part in reversed(_ESC.sub("", s).split("\r")):
                text = " ".join(_BAR.sub(" ", part).split())
                if text:
                    self.latest = text
                    break
        elif s.strip():
            self.real.write(s)
        return len(s)

    def flush(self) -> None:
        self.real.flush()


class QuietProgress:
    """Context manager: while active, sys.stderr is the sink and a daemon thread reports."""

    def __init__(self, prog: str, interval: float | None = None) -> None:
        self.prog = prog
        self.interval = interval_s() if interval is None else interval
        self._stop = threading.Event()
        self._t0 = time.perf_counter()

    def __enter__(self) -> QuietProgress:
        self._real = sys.stderr
        self.sink = _Sink(self._real)
        sys.stderr = self.sink
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            elapsed = int(time.perf_counter() - self._t0)
            state = self.sink.latest or "starting"
            self._real.write(f"{self.prog}: {elapsed // 60} min {elapsed % 60:02d} s: {state}\n")
            self._real.flush()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        sys.stderr = self._real
