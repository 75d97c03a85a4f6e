"""Which delay queue a ticket waits in: never one that brings it back before it is due, and, for
tickets, one that may bring it back a little late rather than one that brings it back many times."""

from __future__ import annotations

from shared.topology import DELAY_BUCKETS, TICKET_LATENESS, delay_bucket_for


def test_a_retry_waits_in_the_largest_bucket_not_longer_than_its_delay() -> None:
    assert [delay_bucket_for(d) for d in DELAY_BUCKETS] == list(DELAY_BUCKETS)
    assert delay_bucket_for(0.99) == 0.2 and delay_bucket_for(29.0) == 5.0
    assert delay_bucket_for(0.05) == 0.2  # the smallest, whatever is left


def test_a_ticket_parked_just_after_it_was_decided_waits_once_not_five_times() -> None:
    # A tick due in 1 s, parked 10-150 ms later: one hop through the 1-s queue (at most a quarter
    # of its wait late), not five through the 0.2-s one, each delivered and parked again.
    for left in (0.99, 0.9, 0.85):
        assert delay_bucket_for(left, lateness=TICKET_LATENESS) == 1.0
    assert delay_bucket_for(0.7, lateness=TICKET_LATENESS) == 0.2  # 1 s would be 43% late
    assert delay_bucket_for(25.0, lateness=TICKET_LATENESS) == 30.0
    assert delay_bucket_for(20.0, lateness=TICKET_LATENESS) == 5.0
