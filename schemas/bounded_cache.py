"""A dict that forgets everything when full: the memo behind decoding and pricing lookups.

Why not ``functools.lru_cache``: the keys are few and hot (attribute keys, model names) and a
hit must cost one dict lookup; clearing at ``limit`` bounds memory against hostile input (every
span a new model name) without the bookkeeping of recency.
"""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(dict[K, V], Generic[K, V]):
    """A dict that is cleared when it reaches ``limit`` entries (cheap, bounded)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: K, value: V) -> V:
        """Store ``value`` (clearing everything first when full) and return it."""
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
