"""What every importer shares: reading a foreign ``.pt``/``.pth`` safely, renaming its tensors onto
one of our architectures with every tensor accounted for, and registering the result.

torch is imported inside functions: the registry package never imports it at module level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import InvalidWeightsError
from registry.importers.errors import WeightMappingError
from registry.manifest import Manifest
from registry.registry import Registry

if TYPE_CHECKING:
    import torch

# keys under which training scripts nest the state dict (SpikingJelly's examples save "net",
# timm- and torchvision-style scripts "model" or "state_dict")
_NESTING_KEYS = ("net", "model", "state_dict", "module")
# prefixes that wrappers add to every name (DistributedDataParallel, torch.compile)
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def load_foreign_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a foreign checkpoint, read with ``torch.load(weights_only=True)`` only.

    Accepts a plain state dict or one nested under "net", "model", "state_dict" or "module"
    (optimizer state and epoch counters beside it are ignored; they are plain data too). A file
    that pickles anything else (an argparse Namespace, a whole nn.Module) is refused before any of
    it runs: save ``model.state_dict()`` instead.
    """
    import pickle

    import torch

    if not path.is_file():
        raise InvalidWeightsError(f"checkpoint {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidWeightsError(
            f"{path} was refused: torch.load(weights_only=True) reads plain tensors and containers "
            f"only ({first_line}); save model.state_dict() rather than the model or its arguments"
        ) from None
    for _ in range(3):  # a state dict nested once or twice ({"model": {"state_dict": ...}})
        if not isinstance(loaded, Mapping) or all(isinstance(v, torch.Tensor) for v in loaded.values()):
            break
        nested = next((loaded[k] for k in _NESTING_KEYS if isinstance(loaded.get(k), Mapping)), None)
        if nested is None:
            break
        loaded = nested
    if not isinstance(loaded, Mapping) or not loaded:
        raise InvalidWeightsError(f"{path} holds {type(loaded).__name__}, not a mapping of names to tensors")
    bad = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidWeightsError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    return {_strip_wrappers(k): v for k, v in loaded.items()}


def _strip_wrappers(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


Rename = Callable[[str], "str | None"]


def rename_exactly(
    source: Mapping[str, torch.Tensor],
    rename: Rename,
    expected_shapes: Mapping[str, tuple[int, ...]],
    *,
    origin: str,
    target: str,
    transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> dict[str, torch.Tensor]:
    """``source`` renamed by ``rename`` onto ``expected_shapes``' names, every tensor accounted for.

    ``transforms`` reshapes a renamed tensor (by its new name) before the shape check. Raises
    WeightMappingError listing tensors that map nowhere, names that two tensors claim, target
    tensors that nothing fills, and shape mismatches: an import is all or nothing.
    """
    renamed: dict[str, torch.Tensor] = {}
    origins: dict[str, str] = {}
    unmatched: list[str] = []
    clashes: list[str] = []
    for name, tensor in source.items():
        new_name = rename(name)
        if new_name is None or new_name not in expected_shapes:
            unmatched.append(name if new_name is None else f"{name} (-> {new_name})")
            continue
        if new_name in renamed:
            clashes.append(f"{origins[new_name]} and {name} -> {new_name}")
            continue
        if transforms and new_name in transforms:
            tensor = transforms[new_name](tensor)
        renamed[new_name], origins[new_name] = tensor, name
    missing = sorted(set(expected_shapes) - set(renamed))
    wrong_shape = [
        f"{origins[n]} {tuple(t.shape)} -> {n} {expected_shapes[n]}"
        for n, t in renamed.items()
        if tuple(t.shape) != tuple(expected_shapes[n])
    ]
    problems = []
    if unmatched:
        problems.append(
            f"{len(unmatched)} tensor(s) of the {origin} checkpoint map to nothing: {_few(unmatched)}"
        )
    if clashes:
        problems.append(f"tensors claim the same target: {_few(clashes)}")
    if missing:
        problems.append(f"{len(missing)} tensor(s) of {target} are missing: {_few(missing)}")
    if wrong_shape:
        problems.append(f"shapes differ: {_few(wrong_shape)}")
    if problems:
        raise WeightMappingError(
            f"cannot import this {origin} checkpoint as {target}: " + "; ".join(problems)
        )
    return renamed


def _few(items: Sequence[str], limit: int = 6) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def expected_shapes(architecture: str, config: Mapping[str, Any], neuron: Any) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``architecture``'s state dict, built on the meta device (no memory)."""
    import torch

    from models import create_model

    with torch.device("meta"):
        model = create_model(architecture, **config, neuron=neuron)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@dataclass(frozen=True)
class Destination:
    """Where and how an imported network is registered; the manifest fields the source lacks."""

    name: str
    input: Mapping[str, Any]
    time_steps: Mapping[str, Any]
    labels: Sequence[str] | None = None  # None: "0" .. "num_classes - 1"
    description: str = ""
    aliases: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)


def register_imported(
    registry: Registry,
    destination: Destination,
    *,
    architecture: str,
    config: Mapping[str, Any],
    neuron: Mapping[str, Any] | None,
    state_dict: Mapping[str, Any],
    provenance: Mapping[str, str],
    description: str,
) -> Manifest:
    """Register through the registry's public API (so its checks on a new version apply), with the
    source recorded in the manifest's tags (``imported_from``, ``source_*``)."""
    num_classes = config.get("num_classes")
    labels = destination.labels
    if labels is None:
        labels = [str(i) for i in range(int(num_classes))] if isinstance(num_classes, int) else []
    return registry.register(
        destination.name,
        architecture=architecture,
        config=config,
        neuron=neuron,
        time_steps=destination.time_steps,
        input=destination.input,
        labels=labels,
        weights=state_dict,
        description=destination.description or description,
        tags={**provenance, **destination.tags},
        aliases=destination.aliases,
    )
