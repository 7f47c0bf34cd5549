"""The worst and the best images of an evaluation, kept while the records stream past."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Gallery:
    """Keeps the `size` lowest and the `size` highest scoring images of a stream.

    Only the images that enter either list are drawn (`draw` is called at most once per
    image), so an evaluation over many records holds at most `2 * size` pictures.

    Args:
        size: Images per end (0: keep nothing).
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.worst: list[dict] = []
        self.best: list[dict] = []

    def add(self, record: str, value: float, draw: Callable[[], np.ndarray]) -> None:
        """Offers one image: its record name, its score and how to draw its strip."""
        if self.size <= 0 or value != value:  # NaN: no score to rank by
            return
        entry = None
        for kind, kept, better in (
            ("worst", self.worst, lambda a, b: a < b),
            ("best", self.best, lambda a, b: a > b),
        ):
            if len(kept) < self.size or better(value, kept[-1]["value"]):
                if entry is None:
                    entry = {"record": record, "value": float(value), "strip": draw()}
                kept.append({**entry, "kind": kind})
                kept.sort(key=lambda item: item["value"], reverse=kind == "best")
                del kept[self.size :]

    def items(self) -> list[dict]:
        """`{"record", "value", "strip", "kind"}` dicts: the worst first, then the best."""
        return self.worst + self.best
