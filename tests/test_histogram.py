from __future__ import annotations

import numpy as np
import pytest

from models.histogram import MAX_RELATIVE_ERROR, Histogram


def test_percentiles_within_one_percent() -> None:
    values = np.random.default_rng(5).lognormal(-3, 1.2, 200_000)
    h = Histogram()
    h.record_many(values)
    assert MAX_RELATIVE_ERROR < 0.01
    for p in (1, 10, 50, 90, 95, 99, 99.9):
        exact = float(np.percentile(values, p, method="inverted_cdf"))
        assert h.percentile(p) == pytest.approx(exact, rel=0.01)
    assert h.mean == pytest.approx(values.mean(), rel=1e-12)
    assert h.count == len(values)


def test_record_and_record_many_agree_and_merge_adds() -> None:
    values = np.random.default_rng(6).exponential(0.2, 5000)
    one, many = Histogram(), Histogram()
    for v in values:
        one.record(float(v))
    many.record_many(values)
    assert one.counts == many.counts
    a, b = Histogram(), Histogram()
    a.record_many(values[:2000])
    b.record_many(values[2000:])
    merged = Histogram.merged([a, b])
    assert merged.counts == many.counts and merged.count == many.count
    assert merged.percentile(95) == many.percentile(95)


def test_round_trip_and_empty() -> None:
    h = Histogram()
    assert np.isnan(h.percentile(50))
    h.record_many([0.0, 1e-9, 0.5, 2.0])
    back = Histogram.from_dict(h.to_dict())
    assert back.counts == h.counts and back.max == 2.0 and back.min == 0.0
