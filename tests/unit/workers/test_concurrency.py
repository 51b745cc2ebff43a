"""workers/concurrency.py: torch's threads and the batches at once a worker process chooses."""

from __future__ import annotations

import pytest

from workers.concurrency import Concurrency, plan, usable_cores


@pytest.mark.parametrize(
    ("cores", "torch_threads", "batches", "expected"),
    [
        (2, None, None, Concurrency(None, 1)),  # the default: one batch, torch's own threads
        (2, 0, None, Concurrency(None, 1)),  # 0 means unset, as it always did
        (2, 1, None, Concurrency(1, 1)),
        (2, None, 2, Concurrency(1, 2)),  # several batches share the cores evenly
        (16, None, 2, Concurrency(8, 2)),
        (3, None, 2, Concurrency(1, 2)),
        (1, None, 2, Concurrency(1, 2)),  # never fewer than one thread
        (2, 1, 3, Concurrency(1, 3)),  # both given: as given
        (16, 4, 2, Concurrency(4, 2)),
    ],
)
def test_on_a_cpu_several_batches_share_the_cores(
    cores: int, torch_threads: int | None, batches: int | None, expected: Concurrency
) -> None:
    assert plan("cpu", torch_threads, batches, cores=cores) == expected


def test_on_a_gpu_threads_are_torch_s_unless_told() -> None:
    assert plan("cuda", None, None, cores=16) == Concurrency(None, 1)
    assert plan("cuda:1", 4, None, cores=16) == Concurrency(4, 1)
    assert plan("cuda", None, 2, cores=16) == Concurrency(None, 2)


def test_the_cores_are_those_this_process_may_use() -> None:
    assert usable_cores() >= 1
    assert plan("cpu", None, 2).torch_threads == max(1, usable_cores() // 2)
