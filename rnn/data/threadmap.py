"""An ordered, bounded thread map for the data stages.

NumPy, Arrow and hashlib release the GIL for most of their work, so two threads keep both cores
busy on independent chunks of text. Results come back in input order, and only ``workers + 1``
items are in flight, so a large input is never copied into chunks all at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order; an exception surfaces at its item."""
    in_flight: deque[Future[R]] = deque()
    with ThreadPoolExecutor(workers) as pool:
        for item in items:
            in_flight.append(pool.submit(fn, item))
            if len(in_flight) > workers:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
