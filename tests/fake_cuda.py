"""Stand-ins for CUDA objects, for timing code tested on a machine without a GPU."""

from __future__ import annotations

import time


class WallClockEvent:
    """``torch.cuda.Event`` on the host clock: ``record`` notes the time, ``elapsed_time`` in ms."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return (end.t - self.t) * 1e3
