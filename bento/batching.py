"""Adaptive batching inside the service process that answers the clients: the forward passes of concurrent
requests are merged into one, without a second service, HTTP hop or pickling between them.

One thread runs the network (so a runtime that is not thread-safe, such as an OpenVINO infer request, is only
ever called from it). Each forward pass takes every call waiting when it starts, up to ``max_batch_size`` rows,
and no call waits for a batch to fill: alone, a request runs at once; under load, the calls that arrived during
one pass make the next ("continuous" batching). ``CELLOPS_BATCHING=off`` runs each call alone, through the same
thread and code (the unbatched baseline of ``benchmarks/serve_load.py``).

The number of calls in each pass goes to the Prometheus histogram ``cellops_adaptive_batch_size{runner_name,
method_name}`` (the labels of BentoML's own ``bentoml_service_adaptive_batch_size``), on the service's ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

#: Environment variable that switches adaptive batching off (``off``, ``0``, ``false``, ``no``); on by default.
BATCHING_ENV = "CELLOPS_BATCHING"
#: Name of the batch-size histogram (calls per forward pass).
BATCH_METRIC = "cellops_adaptive_batch_size"
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)

_HISTOGRAM: list = []
_HISTOGRAM_LOCK = threading.Lock()


def batching_enabled() -> bool:
    """Whether the services batch concurrent calls (``CELLOPS_BATCHING``; on unless ``off``, ``0``, ``false``, ``no``).

    Examples
    --------
    >>> os.environ[BATCHING_ENV] = "off"; batching_enabled()
    False
    >>> del os.environ[BATCHING_ENV]; batching_enabled()
    True
    """
    return os.environ.get(BATCHING_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def _batch_histogram():
    """The histogram, created once per process (``prometheus_client`` imported only now, after BentoML has set the
    worker's ``PROMETHEUS_MULTIPROC_DIR``)."""
    with _HISTOGRAM_LOCK:
        if not _HISTOGRAM:
            import prometheus_client

            _HISTOGRAM.append(prometheus_client.Histogram(
                BATCH_METRIC, "Calls merged into each forward pass by the in-process adaptive batching",
                ["runner_name", "method_name"], buckets=BATCH_BUCKETS))
        return _HISTOGRAM[0]


class _Call:
    """Rows waiting for a forward pass, or (``job``) a function to run alone on the forward thread."""

    __slots__ = ("rows", "job", "future")

    def __init__(self, rows: np.ndarray | None = None, job: Callable[[], object] | None = None) -> None:
        self.rows, self.job, self.future = rows, job, Future()


class Batcher:
    """Runs ``forward`` on one thread over the rows (axis 0) of concurrent calls, merged.

    Parameters
    ----------
    forward : callable
        ``forward(rows) -> outputs``: an array with one output row per input row.
    max_batch_size : int
        The most rows in one pass (a single call with more runs alone).
    service, api : str
        The histogram's labels.
    enabled : bool, optional
        Merge calls (default: :func:`batching_enabled`); False: one call per pass.

    Examples
    --------
    >>> batcher = Batcher(lambda rows: rows * 2, max_batch_size=8, service="doc", api="double", enabled=True)
    >>> batcher(np.arange(3.0)).tolist()
    [0.0, 2.0, 4.0]
    >>> batcher.run_alone(sum, [1, 2])
    3
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int, service: str, api: str,
                 enabled: bool | None = None) -> None:
        self.forward, self.max_batch_size = forward, max_batch_size
        self.enabled = batching_enabled() if enabled is None else enabled
        self.labels = {"runner_name": service, "method_name": api}
        self._waiting: deque = deque()
        self._ready = threading.Condition()
        threading.Thread(target=self._serve, name=f"{service}-{api}-forward", daemon=True).start()

    def submit(self, rows: np.ndarray) -> Future:
        """Queue ``rows`` for a forward pass; the future holds their outputs."""
        return self._queue(_Call(np.asarray(rows)))

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """The outputs of ``rows``, waited for (from a worker thread)."""
        return self.submit(rows).result()

    async def run(self, rows: np.ndarray) -> np.ndarray:
        """The outputs of ``rows``, awaited (from the event loop)."""
        return await asyncio.wrap_future(self.submit(rows))

    def run_alone(self, function: Callable, *args):
        """``function(*args)`` on the forward thread, alone (another use of the network, e.g. a CAM), waited for."""
        return self._queue(_Call(job=lambda: function(*args))).result()

    def _queue(self, call: _Call) -> Future:
        with self._ready:
            self._waiting.append(call)
            self._ready.notify()
        return call.future

    def _next_calls(self) -> list[_Call]:
        """The calls of the next pass: the first waiting one, then, in arrival order, every other that keeps the
        total within ``max_batch_size`` (those skipped stay first in line for the next pass)."""
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            first = self._waiting.popleft()
            if first.job is not None or not self.enabled:
                return [first]
            calls, rows, skipped = [first], len(first.rows), deque()
            while self._waiting and self._waiting[0].job is None:
                call = self._waiting.popleft()
                if rows + len(call.rows) <= self.max_batch_size:
                    calls.append(call)
                    rows += len(call.rows)
                else:
                    skipped.append(call)
            self._waiting.extendleft(reversed(skipped))
            return calls

    def _serve(self) -> None:
        while True:
            calls = self._next_calls()
            if calls[0].job is not None:  # run_alone
                _settle(calls, lambda: [calls[0].job()])
                continue
            if self.enabled:
                _batch_histogram().labels(**self.labels).observe(len(calls))
            _settle(calls, lambda: _split(self.forward(np.concatenate([c.rows for c in calls])),
                                          [len(c.rows) for c in calls]))


def _split(outputs: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """``outputs`` cut into consecutive pieces of ``counts`` rows.

    Examples
    --------
    >>> [piece.tolist() for piece in _split(np.arange(5), [2, 3])]
    [[0, 1], [2, 3, 4]]
    """
    return np.split(np.asarray(outputs), np.cumsum(counts)[:-1])


def _settle(calls: list[_Call], compute: Callable[[], list]) -> None:
    """Give each call its result, or every call the exception the pass raised (the thread lives on)."""
    try:
        results = compute()
    except BaseException as error:  # noqa: BLE001 - handed to the waiting requests, which answer it
        for call in calls:
            call.future.set_exception(error)
        return
    for call, result in zip(calls, results):
        call.future.set_result(result)
