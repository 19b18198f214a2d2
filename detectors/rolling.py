"""Fixed-size rolling window with order statistics (median, quantiles, robust scale).

Why its own module: the robust baselines (median / IQR) of the level-shift scorer need the
last ``capacity`` accepted values *and* them in sorted order.  Two compact ``array('d')``
buffers (a ring in arrival order and a sorted copy maintained with ``bisect``) keep memory
at ``16 * capacity`` bytes (``8 * capacity`` in a snapshot: the sorted copy is rebuilt on
load) and make every query O(1) or O(capacity).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, insort


class RollingQuantiles:
    """The last ``capacity`` values with sorted access.

    >>> w = RollingQuantiles(3)
    >>> for v in (5.0, 1.0, 3.0, 10.0):
    ...     w.add(v)
    >>> len(w), w.median()
    (3, 3.0)
    """

    __slots__ = ("_capacity", "_head", "_ring", "_sorted")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            msg = f"RollingQuantiles capacity must be >= 1, got {capacity}"
            raise ValueError(msg)
        self._capacity = capacity
        self._ring = array("d")
        self._sorted = array("d")
        self._head = 0

    def __len__(self) -> int:
        return len(self._ring)

    def __getstate__(self) -> tuple[int, int, bytes]:
        # The sorted copy is derived data: rebuilt on load, so snapshots stay half the size.
        return (self._capacity, self._head, self._ring.tobytes())

    def __setstate__(self, state: tuple[int, int, bytes]) -> None:
        self._capacity, self._head, ring = state
        self._ring = array("d")
        self._ring.frombytes(ring)
        self._sorted = array("d", sorted(self._ring))

    def add(self, value: float) -> None:
        """Append ``value``, evicting the oldest one when full."""
        if len(self._ring) < self._capacity:
            self._ring.append(value)
        else:
            old = self._ring[self._head]
            self._ring[self._head] = value
            self._head = (self._head + 1) % self._capacity
            del self._sorted[bisect_left(self._sorted, old)]
        insort(self._sorted, value)

    def quantile(self, q: float) -> float:
        """Return the lower nearest-rank quantile ``q`` in ``[0, 1]`` (window must be non-empty)."""
        n = len(self._sorted)
        return self._sorted[min(n - 1, max(0, int(q * (n - 1))))]

    def median(self) -> float:
        """Return the median (mean of the two middle values for an even count)."""
        s, n = self._sorted, len(self._sorted)
        mid = n // 2
        return s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])

    def robust_scale(
        self, center: float, rel_floor: float = 1e-6, abs_floor: float = 1e-12
    ) -> float:
        """Return a robust standard-deviation estimate around ``center``.

        ``IQR / 1.349`` (exact for a normal), falling back to the mean absolute deviation
        (times 1.2533, also normal-consistent) when more than half the window is one value
        (quantized or mostly-zero series), and never below ``rel_floor * |center| + abs_floor``
        so a perfectly flat series does not divide by zero.
        """
        floor = rel_floor * abs(center) + abs_floor
        scale = (self.quantile(0.75) - self.quantile(0.25)) / 1.349
        if scale >= floor:
            return scale
        mad = sum(abs(v - center) for v in self._sorted) / len(self._sorted) * 1.2533
        return max(floor, mad)

    def clear(self) -> None:
        """Forget every value (a regime change: the old level no longer describes normal)."""
        self._ring = array("d")
        self._sorted = array("d")
        self._head = 0

    def values(self) -> list[float]:
        """Return the values in arrival order (oldest first); for tests and snapshots."""
        return list(self._ring[self._head :]) + list(self._ring[: self._head])
