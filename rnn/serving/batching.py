"""Concurrent generations of one model stepped together: one onnxruntime call per step for every
stream that waits on one, instead of one call each.

A step of a recurrent model reads all its weights to move one token: ~5.6 MB for the
tinyshakespeare GRU (2 x 384), so eight streams stepping one at a time read them eight times. In
a batch the weights are read once for all (a matrix product instead of eight matrix-vector
products), and the 2 cores stop switching between eight sessions. Alone, a stream calls the model
directly: the hand-off to the batching thread would only add latency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

State = list[np.ndarray]
StepMany = Callable[[list[int], list[State]], list[tuple[np.ndarray, State]]]
GATHER_S = 0.001  # how long a batch waits for the other active streams' steps


@dataclass
class _Pending:
    token: int
    state: State
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[np.ndarray, State] | None = None
    error: BaseException | None = None


class StepBatcher:
    """``step`` for each of the concurrent ``streaming()`` blocks, run in batches by
    ``step_many`` (tokens and states in, one (logits, state) per stream out)."""

    def __init__(self, step_many: StepMany) -> None:
        self.step_many = step_many
        self._waiting: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._active = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """Count a generation as active while the block runs."""
        with self._lock:
            self._active += 1
            if self._active > 1 and self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True, name="steps")
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def step(self, token: int, state: State) -> tuple[np.ndarray, State]:
        if self._active <= 1:  # alone: no hand-off
            return self.step_many([token], [state])[0]
        pending = _Pending(token, state)
        self._waiting.put(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def _serve(self) -> None:
        while True:
            batch = [self._waiting.get()]
            deadline = time.perf_counter() + GATHER_S
            while len(batch) < self._active:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    batch.append(self._waiting.get(timeout=left))
                except queue.Empty:
                    break
            try:
                results = self.step_many([p.token for p in batch], [p.state for p in batch])
            except BaseException as err:  # every waiting stream hears of it
                for p in batch:
                    p.error = err
            else:
                for p, result in zip(batch, results, strict=True):
                    p.result = result
            for p in batch:
                p.done.set()
