"""Work split into K shards by index, the same way for generation and for scoring.

A shard is `(k, K)`, shard k of K (0 <= k < K), or the text "k/K". Items are grouped into units
(a batch of `unit` items: the generator's batch, an evaluator's batch or feature shard) and shard k
takes a contiguous run of whole units. An item is therefore always computed in the same batch,
with the same batch-mates, whatever K is: per-item results of K shards are bit-identical to those
of one run, and the shards' results concatenated in k order are the unsharded results in order.
"""
from __future__ import annotations

import operator

Shard = tuple[int, int]


def check_shard(shard) -> Shard:
    """(k, K) from (k, K), [k, K] or "k/K"; None means the whole set, (0, 1). A ValueError names a bad one."""
    if shard is None:
        return 0, 1
    try:
        if isinstance(shard, str):
            k, count = (int(part) for part in shard.split("/"))
        else:
            k, count = (operator.index(part) for part in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard {shard!r} is not shard k of K: give (k, K) or 'k/K' with 0 <= k < K") from None
    if count < 1 or not 0 <= k < count:
        raise ValueError(f"shard {k}/{count} is out of range: k runs over 0..K-1 (K >= 1)")
    return k, count


def shard_range(n_items: int, unit: int, shard) -> range:
    """The items of shard k of K among `n_items`: whole units of `unit` items, units k*U//K up to
    (k+1)*U//K of the U units (shards differ by at most one unit; a shard beyond U is empty)."""
    if unit < 1:
        raise ValueError(f"unit {unit}: a shard is made of whole units of at least 1 item")
    k, count = check_shard(shard)
    units = -(-n_items // unit)
    first, last = k * units // count, (k + 1) * units // count
    return range(first * unit, min(last * unit, n_items))
