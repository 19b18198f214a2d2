"""Optional pseudonymisation of tenant ids, for teams whose tenant ids are personal data.

Applied to the decoded records of each batch, before anything is aggregated, so every output
(rollups, metrics, alerts, exemplars' rows) only ever sees the pseudonym.  A keyed hash (BLAKE2b
with a secret salt) keeps pseudonyms stable across restarts and workers while making them
impossible to reverse by hashing a list of candidate ids without the salt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import polars as pl

from spanpulse.schemas.record import OTHER, UNKNOWN

_RESERVED = frozenset({UNKNOWN, OTHER})


@dataclass
class TenantHasher:
    """Replaces ``tenant`` values by ``t_<16 hex>`` pseudonyms.

    Args:
        salt: secret key of the keyed hash (from config; never logged).
        cache_size: pseudonyms remembered between batches (bounded).
    """

    salt: bytes
    cache_size: int = 100_000
    _cache: dict[str, str] = field(default_factory=dict, repr=False)

    def pseudonym(self, tenant: str) -> str:
        """Return the stable pseudonym of one tenant id."""
        hit = self._cache.get(tenant)
        if hit is None:
            digest = hashlib.blake2b(tenant.encode(), key=self.salt[:64], digest_size=8).hexdigest()
            hit = f"t_{digest}"
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[tenant] = hit
        return hit

    def apply(self, records: pl.DataFrame) -> pl.DataFrame:
        """Return ``records`` with the tenant column pseudonymised (nulls stay null)."""
        if records.is_empty() or "tenant" not in records.columns:
            return records
        values = [
            v for v in records["tenant"].unique().to_list() if v is not None and v not in _RESERVED
        ]
        mapping = {v: self.pseudonym(v) for v in values}
        return records.with_columns(pl.col("tenant").replace(mapping))
