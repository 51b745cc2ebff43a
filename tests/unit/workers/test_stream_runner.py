"""Stream sessions on a worker: kept membranes, sliding context, resets, bounded sessions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_zoo import EVENT_DANET_MODEL, EVENTS_MODEL, register_event_danet, register_spikeformer

from registry import Registry
from workers.stream_protocol import StreamWindow
from workers.stream_runner import StreamRunner


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    registry = Registry(tmp_path_factory.mktemp("stream-registry"))
    register_event_danet(registry)
    register_spikeformer(registry)
    return registry


def frames(steps: int, seed: int) -> np.ndarray:
    """[steps, 2, 34, 34] event counts, dense enough that random weights fire up to the head."""
    rng = np.random.default_rng(seed)
    counts = (rng.random((steps, 2, 34, 34)) < 0.3) * rng.integers(1, 5, (steps, 2, 34, 34))
    return counts.astype(np.float32)


def window(model: str, index: int, x: np.ndarray, session: str = "s1", **extra: object) -> StreamWindow:
    return StreamWindow(session, model, 1, index, x, **extra)  # type: ignore[arg-type]


def whole_forward(registry: Registry, model: str, x: np.ndarray) -> torch.Tensor:
    _, module = registry.load(f"{model}:1")
    module.eval()
    with torch.inference_mode():
        return module(torch.from_numpy(x).unsqueeze(1))[0]


def test_stateful_windows_end_with_the_logits_of_one_forward_over_all_steps(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    assert runner.describe(EVENT_DANET_MODEL, 1)[0] == "stateful"
    x = frames(12, seed=1)
    answers = [runner.run_window(window(EVENT_DANET_MODEL, i, x[3 * i : 3 * i + 3])) for i in range(4)]
    assert [a.state_steps for a in answers] == [3, 6, 9, 12]
    assert not any(a.state_reset for a in answers)
    expected = whole_forward(registry, EVENT_DANET_MODEL, x)
    torch.testing.assert_close(torch.tensor(answers[-1].logits), expected, atol=1e-4, rtol=1e-4)
    # and the state is what makes it so: one window alone answers something else
    alone = StreamRunner(registry, backend="torch").run_window(window(EVENT_DANET_MODEL, 0, x[9:12]))
    assert not np.allclose(alone.logits, answers[-1].logits, atol=1e-3)


def test_sessions_keep_their_own_state(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    x, y = frames(8, seed=2), frames(8, seed=3)
    for i in range(2):  # interleaved: each session's membranes are swapped in for its window
        a = runner.run_window(window(EVENT_DANET_MODEL, i, x[4 * i : 4 * i + 4], session="a"))
        b = runner.run_window(window(EVENT_DANET_MODEL, i, y[4 * i : 4 * i + 4], session="b"))
    torch.testing.assert_close(
        torch.tensor(a.logits), whole_forward(registry, EVENT_DANET_MODEL, x), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        torch.tensor(b.logits), whole_forward(registry, EVENT_DANET_MODEL, y), atol=1e-4, rtol=1e-4
    )


def test_reset_starts_from_rest_and_an_unknown_session_says_state_reset(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    x = frames(8, seed=4)
    runner.run_window(window(EVENT_DANET_MODEL, 0, x[:4]))
    again = runner.run_window(window(EVENT_DANET_MODEL, 1, x[4:], reset=True))
    assert again.state_steps == 4 and not again.state_reset
    other = StreamRunner(registry, backend="torch")  # another worker: it never saw windows 0 and 1
    moved = other.run_window(window(EVENT_DANET_MODEL, 2, x[4:]))
    assert moved.state_reset and moved.state_steps == 4
    torch.testing.assert_close(torch.tensor(moved.logits), torch.tensor(again.logits), atol=1e-4, rtol=1e-4)


def test_sliding_context_runs_the_last_t_steps_from_rest(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    mode, context = runner.describe(EVENTS_MODEL, 1)
    assert (mode, context) == ("sliding", 4)
    x = frames(10, seed=5)
    answers = [runner.run_window(window(EVENTS_MODEL, i, x[2 * i : 2 * i + 2])) for i in range(5)]
    assert [a.state_steps for a in answers] == [2, 4, 4, 4, 4]
    expected = whole_forward(registry, EVENTS_MODEL, x[6:10])
    torch.testing.assert_close(torch.tensor(answers[-1].logits), expected, atol=1e-4, rtol=1e-4)


def test_sessions_are_bounded(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch", max_sessions=2)
    for name in ("a", "b", "c"):
        runner.run_window(window(EVENT_DANET_MODEL, 0, frames(1, seed=6), session=name))
    assert runner.sessions() == 2
    assert runner.run_window(window(EVENT_DANET_MODEL, 1, frames(1, seed=6), session="a")).state_reset


def test_telemetry_per_window(registry: Registry) -> None:
    answer = StreamRunner(registry, backend="torch").run_window(
        window(EVENT_DANET_MODEL, 0, frames(2, seed=7))
    )
    assert answer.telemetry is not None and 0.0 <= answer.telemetry["spike_rate"] <= 1.0
    quiet = StreamRunner(registry, backend="torch").run_window(
        window(EVENT_DANET_MODEL, 0, frames(2, seed=7), telemetry="none")
    )
    assert quiet.telemetry is None


def test_windows_of_several_sessions_run_as_one_batch_each_with_its_own_state(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    x, y, z = frames(8, seed=8), frames(8, seed=9), frames(4, seed=10)
    runner.run_windows(
        [window(EVENT_DANET_MODEL, 0, x[:4], session="a"), window(EVENT_DANET_MODEL, 0, y[:4], session="b")]
    )
    a, b, c = runner.run_windows(  # c is new: its rows start from rest beside a's and b's kept ones
        [
            window(EVENT_DANET_MODEL, 1, x[4:], session="a"),
            window(EVENT_DANET_MODEL, 1, y[4:], session="b"),
            window(EVENT_DANET_MODEL, 0, z, session="c"),
        ]
    )
    for answer, inputs in ((a, x), (b, y), (c, z)):
        expected = whole_forward(registry, EVENT_DANET_MODEL, inputs)
        torch.testing.assert_close(torch.tensor(answer.logits), expected, atol=1e-4, rtol=1e-4)
    assert (a.state_steps, b.state_steps, c.state_steps) == (8, 8, 4)


def test_two_windows_of_one_session_in_one_call_run_in_order(registry: Registry) -> None:
    runner = StreamRunner(registry, backend="torch")
    x = frames(6, seed=11)
    first, second = runner.run_windows(
        [window(EVENT_DANET_MODEL, 0, x[:3]), window(EVENT_DANET_MODEL, 1, x[3:])]
    )
    assert (first.state_steps, second.state_steps) == (3, 6)
    torch.testing.assert_close(
        torch.tensor(second.logits), whole_forward(registry, EVENT_DANET_MODEL, x), atol=1e-4, rtol=1e-4
    )
