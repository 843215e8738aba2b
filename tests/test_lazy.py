"""reading.lazy: a request's facts computed on first read, once, and kept by that request alone."""

from __future__ import annotations

import threading

from cds_service.reading.lazy import lazy

from .record_support import facts_of
from .test_timeline import ketamine_request


class _Counted:
    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    @lazy
    def doubled(self) -> int:
        """Twice n."""
        self.calls += 1
        return self.n * 2


def test_computed_once_per_instance_and_never_shared():
    a, b = _Counted(1), _Counted(5)
    assert (a.doubled, a.doubled, b.doubled, b.doubled) == (2, 2, 10, 10)
    assert (a.calls, b.calls) == (1, 1)
    assert _Counted.doubled.__doc__ == "Twice n."  # the class attribute is the descriptor


def test_instances_in_other_threads_each_compute_their_own():
    out: dict[int, int] = {}

    def read(i: int) -> None:
        c = _Counted(i)
        out[i] = c.doubled + c.doubled + c.calls

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: 4 * i + 1 for i in range(8)}


def test_facts_memos_belong_to_their_request():
    """Two requests' facts: the memos each fills are its own (a shared one would answer the second
    request with the first one's readings)."""
    first, second = facts_of(ketamine_request()), facts_of(ketamine_request())
    assert first.series("phq9") and first.series("phq9") is first.series("phq9")
    assert second._series == {} and second._newest == {} and second._candidates_by_kind == {}
    assert second.series("phq9") is not first.series("phq9")
    assert [o.value for o in second.series("phq9")] == [o.value for o in first.series("phq9")]
    assert first.age is not None and "age" in vars(first) and "age" not in vars(second)
