"""models/stepping.py: step-by-step membranes belong to the caller, so another thread's plain
forwards, warm-ups and resets of the same network neither disturb them nor see them."""

from __future__ import annotations

import threading

import torch

from models import create_model
from models.base import reset_state, spiking_layers
from models.stepping import StepState, stepping


def test_steps_equal_one_forward_while_another_thread_uses_the_network() -> None:
    torch.manual_seed(0)
    model = create_model("danet_resnet18", num_classes=10, in_channels=1, base_width=8, stem="small").eval()
    x = torch.rand((3, 2, 1, 28, 28)) * 3
    other = torch.rand((2, 5, 1, 28, 28)) * 3
    with torch.no_grad():
        expected = model.forward_steps(x)  # [T, B, classes] from rest
        expected_other = model(other)
    first_step_done, plain_done = threading.Event(), threading.Event()
    outputs: list[torch.Tensor] = []

    def step_by_step() -> None:
        state = StepState()
        with torch.no_grad(), stepping(state):
            for t in range(3):
                outputs.append(model(x[t : t + 1]))
                if t == 0:
                    first_step_done.set()
                    plain_done.wait(timeout=60)

    worker = threading.Thread(target=step_by_step)
    worker.start()
    assert first_step_done.wait(timeout=60)
    with torch.no_grad():
        plain = model(other)  # this thread: a plain forward from rest, mid-run of the other
    reset_state(model)
    plain_done.set()
    worker.join(timeout=60)

    torch.testing.assert_close(plain, expected_other)
    for t in range(3):
        torch.testing.assert_close(outputs[t], expected[t])
    assert all(neuron.v is None and not neuron.streaming for neuron in spiking_layers(model))


def test_keep_rows_cuts_every_membrane_to_the_rows_left() -> None:
    state = StepState()
    state.membranes = {1: torch.arange(12.0).reshape(4, 3), 2: torch.arange(8.0).reshape(4, 2)}
    state.keep_rows(torch.tensor([0, 2]))
    torch.testing.assert_close(state.membranes[1], torch.tensor([[0.0, 1, 2], [6, 7, 8]]))
    torch.testing.assert_close(state.membranes[2], torch.tensor([[0.0, 1], [4, 5]]))
