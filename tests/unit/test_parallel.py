import time

import pytest

from rnn.data.threadmap import ordered_map


def test_results_come_back_in_input_order():
    def slow_for_small(i: int) -> int:
        time.sleep(0.002 * (10 - i))  # early items finish last
        return i * i

    assert list(ordered_map(slow_for_small, range(10))) == [i * i for i in range(10)]


def test_an_exception_surfaces_at_its_item():
    def fail_on_three(i: int) -> int:
        if i == 3:
            raise ValueError("bad item 3")
        return i

    results = ordered_map(fail_on_three, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="bad item 3"):
        next(results)
