"""The feeder's max-min fair split of the window's room (``workers.feeder.fair_shares``)."""

from __future__ import annotations

from shared.jobs import FeedLoad
from workers.feeder import fair_shares


def _load(job_id: str, in_window: int, waiting: int) -> FeedLoad:
    return FeedLoad(job_id, exists=True, in_window=in_window, waiting=waiting, rate=0.0)


def test_equal_split_between_jobs_that_want_more():
    assert fair_shares([_load("a", 0, 1000), _load("b", 0, 1000)], 100) == {"a": 50, "b": 50}


def test_a_job_holding_the_window_gets_nothing_until_the_newcomer_catches_up():
    shares = fair_shares([_load("big", 90, 10**6), _load("small", 0, 20)], 10)
    assert shares == {"big": 0, "small": 10}
    shares = fair_shares([_load("big", 90, 10**6), _load("small", 0, 20)], 150)
    assert shares == {"big": 130, "small": 20}  # what small cannot use goes to big: no room idles


def test_levels_rise_together_and_the_remainder_rotates():
    loads = [_load("a", 3, 100), _load("b", 0, 100), _load("c", 5, 100)]
    shares = fair_shares(loads, 10)
    assert sum(shares.values()) == 10 and shares["c"] <= 1
    levels = [w.in_window + shares[w.job_id] for w in loads]
    assert max(levels) - min(levels) <= 1
    firsts = {tuple(sorted(fair_shares([_load("a", 0, 9), _load("b", 0, 9)], 3, turn).items())) for turn in (0, 1)}
    assert firsts == {(("a", 2), ("b", 1)), (("a", 1), ("b", 2))}


def test_nothing_to_give():
    assert fair_shares([_load("a", 0, 0)], 10) == {} and fair_shares([_load("a", 0, 5)], 0) == {}
    assert fair_shares([_load("a", 0, 5)], 100) == {"a": 5}
