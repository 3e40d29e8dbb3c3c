"""StartReports: the handler starts a worker has not told the database of yet."""

import uuid

from durable.runtime.leases import StartReports


def test_a_start_is_reported_once_and_a_failed_report_is_sent_again() -> None:
    starts = StartReports()
    a, b, c = (uuid.UUID(int=i) for i in range(3))
    starts.started(a)
    starts.started(b)
    sent = starts.pending()
    assert sorted(sent) == [a, b]
    starts.started(c)  # while the statement that carries a and b is on the wire
    # the statement failed: nothing is marked reported, all three go with the next one
    assert sorted(starts.pending()) == [a, b, c]
    starts.reported(sent)
    assert starts.pending() == [c]
    starts.ended(c)  # its outcome was written: a completion or failure is a start in itself
    assert starts.pending() == []
