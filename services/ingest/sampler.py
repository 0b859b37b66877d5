"""Which frames of a stream to keep so that a camera read at its native rate is produced at the target rate."""
from __future__ import annotations


class FrameSampler:
    """Keeps a frame whenever its time reaches the next slot of a 1/target_fps grid.

    Slots advance on a grid rather than from the last kept frame, so the produced rate converges on the
    target even when the stream's rate is not a multiple of it (10 fps in, 3 fps out keeps 3 of 10).
    After a gap longer than a slot (a reconnect) the grid restarts instead of bursting to catch up."""

    def __init__(self, target_fps: float) -> None:
        if target_fps <= 0:
            raise ValueError(f"target_fps must be positive, got {target_fps}")
        self.interval_s = 1.0 / target_fps
        self._next_due: float | None = None

    def keep(self, t_s: float) -> bool:
        # Half a frame of tolerance at 30 fps, so jittery timestamps don't skip a slot.
        tolerance = 0.015
        if self._next_due is None or t_s - self._next_due > self.interval_s:
            self._next_due = t_s + self.interval_s
            return True
        if t_s + tolerance >= self._next_due:
            self._next_due += self.interval_s
            return True
        return False
