"""A one-line progress bar on stderr, drawn only on a terminal (conversion, evaluation, ...)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (redrawn only on a terminal).

    Args:
        total: The number of steps (0 when unknown: the bar then shows only the count).
        label: What is being done, e.g. "evaluating".
        enabled: Draw at all (the bar is also skipped when stderr is not a terminal).
        unit: The unit of the rate, e.g. "img".
    """

    def __init__(self, total: int, label: str, enabled: bool = True, unit: str = "img"):
        self.total, self.label, self.enabled, self.unit = int(total), label, enabled, unit
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.done = 0

    def update(self, steps: int = 1) -> None:
        """Counts `steps` finished steps and redraws every 10 steps and at the end."""
        self.done += steps
        if not (self.enabled and self.tty):
            return
        if self.done == self.total or self.done % 10 == 0 or self.total <= 50:
            width = 30
            filled = int(width * self.done / max(self.total, 1)) if self.total else 0
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            total = f"/{self.total}" if self.total else ""
            sys.stderr.write(
                f"\r{self.label} [{'=' * filled}{'.' * (width - filled)}] "
                f"{self.done}{total} {rate:.1f} {self.unit}/s"
            )
            sys.stderr.flush()

    def close(self) -> None:
        """Ends the bar's line."""
        if self.enabled and self.tty and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
