"""The replay cache on its own: what it keeps, and what a retransmission gets back."""

from __future__ import annotations

import numpy as np

from rnnstream.server.replay import ReplayCache

N_OUTPUTS, S = 2, 3


def _y(first: int, n: int) -> np.ndarray:
    """Outputs that name their step: row i of steps first.. is [step, -step]."""
    steps = np.arange(first, first + n, dtype=np.float32)
    return np.stack([steps, -steps], axis=1)


def _states(first: int, n: int) -> np.ndarray:
    return np.repeat(np.arange(first, first + n, dtype=np.float32)[:, None], S, axis=1)


def test_an_empty_cache_answers_nothing_and_has_no_last_output():
    cache = ReplayCache()
    assert cache.last_y is None
    first, y, states = cache.replayed(0, 2, False, N_OUTPUTS, S)
    assert first == 2 and y.shape == (0, N_OUTPUTS) and states is None


def test_it_keeps_the_last_steps_across_messages():
    cache = ReplayCache()
    cache.remember(3, _y(0, 3), None, keep=4)
    cache.remember(5, _y(3, 2), None, keep=4)
    assert cache.start == 1
    np.testing.assert_array_equal(cache.y, _y(1, 4))
    np.testing.assert_array_equal(cache.last_y, [4, -4])


def test_at_least_the_last_step_is_kept():
    cache = ReplayCache()
    cache.remember(3, _y(0, 3), None, keep=0)
    assert cache.start == 2
    np.testing.assert_array_equal(cache.y, _y(2, 1))


def test_a_retransmission_gets_the_steps_still_held():
    cache = ReplayCache()
    cache.remember(6, _y(0, 6), None, keep=3)  # holds steps 3, 4, 5
    first, y, states = cache.replayed(4, 2, False, N_OUTPUTS, S)
    assert first == 4 and states is None
    np.testing.assert_array_equal(y, _y(4, 2))
    first, y, _ = cache.replayed(1, 5, False, N_OUTPUTS, S)  # steps 1, 2 are gone: from 3 on
    assert first == 3
    np.testing.assert_array_equal(y, _y(3, 3))
    first, y, _ = cache.replayed(0, 2, False, N_OUTPUTS, S)  # all older than the cache
    assert first == 2 and len(y) == 0


def test_states_come_back_aligned_with_their_outputs():
    cache = ReplayCache()
    cache.remember(4, _y(0, 4), _states(0, 4), keep=8)
    first, y, states = cache.replayed(2, 2, True, N_OUTPUTS, S)
    assert first == 2 and states is not None
    np.testing.assert_array_equal(y, _y(2, 2))
    np.testing.assert_array_equal(states, _states(2, 2))


def test_states_switched_on_start_the_cache_afresh():
    cache = ReplayCache()
    cache.remember(4, _y(0, 4), None, keep=8)
    first, y, states = cache.replayed(2, 2, True, N_OUTPUTS, S)  # outputs without states: no answer
    assert first == 4 and len(y) == 0 and states is not None and states.shape == (0, S)
    cache.remember(6, _y(4, 2), _states(4, 2), keep=8)
    assert cache.start == 4  # the outputs before the states were dropped, to stay aligned
    np.testing.assert_array_equal(cache.states, _states(4, 2))
    cache.remember(7, _y(6, 1), None, keep=8)
    assert cache.states is None and cache.start == 4 and len(cache.y) == 3
