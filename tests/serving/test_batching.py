"""The in-process adaptive batching of the model services (:mod:`bento.batching`): concurrent calls share forward
passes within the size limit and each gets its own rows back; switched off, each call runs alone; a failed pass
fails its own calls only."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bento.batching import BATCHING_ENV, Batcher, batching_enabled


class GatedForward:
    """A forward pass (rows * 10) that records each batch's size and holds the first pass until released, so that
    the calls made meanwhile are waiting when the next pass starts."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.release = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.sizes.append(len(rows))
        self.release.wait(timeout=10)
        if (rows < 0).any():
            raise ValueError("negative rows")
        return rows * 10


def concurrent_calls(batcher: Batcher, forward: GatedForward, calls: list[np.ndarray]) -> list:
    """Start the first call, queue the others while its pass is held, then release: the answers in call order."""
    answers: list = [None] * len(calls)

    def call(i: int) -> None:
        try:
            answers[i] = batcher(calls[i])
        except ValueError as error:
            answers[i] = error

    threads = [threading.Thread(target=call, args=(0,))]
    threads[0].start()
    while not forward.sizes:  # the first pass has started and is held
        threads[0].join(timeout=0.01)
    for i in range(1, len(calls)):
        threads.append(threading.Thread(target=call, args=(i,)))
        threads[-1].start()
    while len(batcher._waiting) < len(calls) - 1:  # all the others are queued behind it
        threads[0].join(timeout=0.01)
    forward.release.set()
    for thread in threads:
        thread.join(timeout=10)
    return answers


def test_waiting_calls_share_passes_within_the_limit_and_get_their_own_rows():
    forward = GatedForward()
    batcher = Batcher(forward, max_batch_size=8, service="test", api="rows", enabled=True)
    calls = [np.full((n, 2), i, np.float32) for i, n in enumerate([1, 4, 3, 5, 1])]
    answers = concurrent_calls(batcher, forward, calls)
    for call, answer in zip(calls, answers):
        np.testing.assert_array_equal(answer, call * 10)
    # The first alone (it ran before the others came), then 4 + 3 + 1 (the 5 skipped: it would pass 8), then 5.
    assert forward.sizes == [1, 8, 5]


def test_switched_off_each_call_runs_alone():
    forward = GatedForward()
    batcher = Batcher(forward, max_batch_size=8, service="test", api="rows", enabled=False)
    calls = [np.full((n, 2), i, np.float32) for i, n in enumerate([1, 2, 3])]
    answers = concurrent_calls(batcher, forward, calls)
    assert forward.sizes == [1, 2, 3]
    for call, answer in zip(calls, answers):
        np.testing.assert_array_equal(answer, call * 10)


def test_a_failed_pass_fails_its_calls_only_and_the_batcher_lives_on():
    forward = GatedForward()
    batcher = Batcher(forward, max_batch_size=4, service="test", api="rows", enabled=True)
    calls = [np.ones((1, 1)), -np.ones((2, 1)), np.ones((2, 1)), np.ones((3, 1))]
    answers = concurrent_calls(batcher, forward, calls)
    assert forward.sizes == [1, 4, 3]  # the bad call shares its pass with the third
    assert isinstance(answers[1], ValueError) and isinstance(answers[2], ValueError)
    np.testing.assert_array_equal(answers[3], calls[3] * 10)
    np.testing.assert_array_equal(batcher(np.ones((1, 1))), [[10.0]])
    assert batcher.run_alone(lambda: "on the forward thread") == "on the forward thread"


@pytest.mark.parametrize(("value", "enabled"), [("off", False), ("0", False), ("No", False), ("on", True), ("", True)])
def test_the_environment_switches_batching(monkeypatch, value, enabled):
    monkeypatch.setenv(BATCHING_ENV, value)
    assert batching_enabled() is enabled
