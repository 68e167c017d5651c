"""Open-model pacing as a pure function of time (no sleeping)."""

from __future__ import annotations

from locustfiles.pacing import Pacer


def test_release_follows_the_trace() -> None:
    p = Pacer([0.5, 1.0, 1.0, 2.5], drop_after=1.0)
    assert p.release(0.4) == []
    assert p.release(1.0) == [(0, 0.5), (1, 1.0), (2, 1.0)]
    assert p.next_due() == 2.5 and not p.done
    assert p.release(10) == [(3, 2.5)] and p.done


def test_lateness_and_drops_are_counted() -> None:
    p = Pacer([0.0, 0.0, 0.0, 0.0], drop_after=1.0)
    p.release(5.0)
    assert p.accept(0.05, 0.0)  # on time
    assert p.accept(0.5, 0.0)  # late, still started
    assert not p.accept(1.5, 0.0)  # waited too long for a free user: dropped
    lat = p.lateness
    assert (lat.started, lat.dropped, lat.late_100ms) == (2, 1, 1)
    assert lat.share_on_time == 0.5 and lat.max_late == 0.5
    assert p.not_started(queued=1) == 1  # the fourth is still queued


def test_an_ab_run_counts_each_side_apart() -> None:
    from locustfiles.pacing import Lateness

    p = Pacer([0.0, 0.0], drop_after=1.0)
    p.release(1.0)
    other = Lateness()
    assert p.accept(0.05, 0.0) and p.accept(0.5, 0.0, other) and not p.accept(2.0, 0.0, other)
    assert (p.lateness.started, p.lateness.dropped) == (1, 0)
    assert (other.started, other.late_100ms, other.dropped) == (1, 1, 1)
