"""Progress output of the commands (encode, decode, eval, bench), on stderr.

On a terminal: a tqdm bar. Written to a file or a pipe: plain lines (``encode: 3/12 latent frames``),
at most one every ``interval`` seconds plus the last one, so that a log holds no escape codes and
no carriage returns. Below the commands: nothing here imports from ``glvc``.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class Progress:
    """A progress display fed by the pipeline's ``(done, total)`` callback (``total`` 0: unknown).

    ``enabled`` False: silent. ``leave`` False: a terminal bar disappears when closed (inner bars).
    """

    def __init__(self, desc: str, enabled: bool = True, unit: str = "latent frames", leave: bool = True,
                 file: TextIO | None = None, interval: float = 10.0):
        self.desc = desc
        self.enabled = enabled
        self.unit = unit
        self.leave = leave
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.terminal = is_terminal(self.file)
        self.bar = None
        self.done = 0
        self.total = 0
        self._last_line = None  # monotonic time of the last plain line
        self._last_text = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        self.done, self.total = done, total
        if self.terminal:
            if self.bar is None:
                from tqdm import tqdm

                # the unit's leading space: tqdm writes "{n}{unit}" ("3 latent frames", not "3latent frames")
                self.bar = tqdm(total=total or None, desc=self.desc, unit=" " + self.unit, leave=self.leave,
                                file=self.file, dynamic_ncols=True)
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self.interval or (total and done >= total):
            self._line(now)

    def _line(self, now: float) -> None:
        text = f"{self.desc}: {self.done}/{self.total} {self.unit}" if self.total else f"{self.desc}: {self.done} {self.unit}"
        if text != self._last_text:
            print(text, file=self.file, flush=True)
            self._last_text = text
        self._last_line = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and not self.terminal and self._last_line is not None:
            self._line(time.monotonic())  # the final count, if the last update was not printed
