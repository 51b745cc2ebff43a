"""SpikingJelly ResNets -> DANet: ``sew_resnet*`` (cnf ADD) and ``spiking_resnet*`` checkpoints.

SpikingJelly's (``spikingjelly.activation_based.model``) SEW ResNet with ``cnf="ADD"`` is our DANet
with ``connection="sew_add"``, and its Spiking ResNet our ``connection="standard"``: the same
convolutions, BN and neurons in the same order, so the import renames tensors and changes none.
Names, SpikingJelly -> ours (k counts the convolutions of a block from 1, s the stages from 1):

    conv1, bn1, sn1                  -> stem.0, stem.1, stem.2
    layer{s}.{b}.conv{k}, .bn{k}      -> stages.{s-1}.blocks.{b}.branch.layers.{3(k-1)}, .{3(k-1)+1}
    layer{s}.{b}.sn{k}                -> ....branch.layers.{3(k-1)+2}; the last of a Spiking ResNet
                                         block fires after the addition: ....out_neuron
    layer{s}.{b}.downsample.{i}       -> ....shortcut.{i};   downsample_sn -> ....shortcut.2
    fc                                -> fc

Neurons carry tensors only when parametric (PLIF's ``w``). The other neuron settings are not in
a state dict: they come from the caller, with SpikingJelly's defaults (tau 2, threshold 1, hard
reset to 0, input decayed). Both run [T, B, C, H, W] inputs in multi-step mode and average the
classifier over T, as ours does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.importers.common import (
    Destination,
    expected_shapes,
    load_foreign_state_dict,
    register_imported,
    rename_exactly,
    sha256_of,
)
from registry.importers.errors import WeightMappingError
from registry.manifest import Manifest
from registry.registry import Registry

_DEPTHS = {"resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50",
           "resnet101": "resnet101", "resnet152": "resnet152", "resnext50_32x4d": "resnext50_32x4d",
           "wide_resnet50_2": "wide_resnet50_2"}  # fmt: skip
_BASIC = ("resnet18", "resnet34")
# SpikingJelly family prefix -> our connection
_FAMILIES = {"sew_": "sew_add", "spiking_": "standard"}
SUPPORTED_ARCHS = tuple(f"{prefix}{depth}" for prefix in _FAMILIES for depth in _DEPTHS)
SUPPORTED_CNF = ("ADD",)
NEURON_KINDS = ("lif", "if", "plif")


@dataclass(frozen=True)
class NeuronSettings:
    """The neuron SpikingJelly was trained with (``spiking_neuron=`` and its keywords).

    Defaults are SpikingJelly's: ``LIFNode(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0)``;
    ``v_reset=None`` is its soft reset. The surrogate and ``detach_reset`` only shape gradients.
    """

    kind: str = "lif"
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True

    def manifest(self) -> dict[str, Any]:
        if self.kind not in NEURON_KINDS:
            raise ValueError(
                f"unknown neuron {self.kind!r}; SpikingJelly imports take {', '.join(NEURON_KINDS)}"
            )
        settings: dict[str, Any] = {
            "kind": self.kind,
            "v_threshold": self.v_threshold,
            "v_reset": self.v_reset,
        }
        if self.kind != "if":
            settings.update(tau=self.tau, decay_input=self.decay_input)
        return settings


def target_of(arch: str, cnf: str | None) -> tuple[str, str]:
    """(our architecture, connection) for SpikingJelly's ``arch``; ValueError for the others."""
    depth, connection = None, ""
    for prefix, family_connection in _FAMILIES.items():
        if arch.startswith(prefix) and arch[len(prefix) :] in _DEPTHS:
            depth, connection = arch[len(prefix) :], family_connection
    if depth is None:
        raise ValueError(
            f"unsupported SpikingJelly architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)}"
        )
    if connection == "sew_add":
        if cnf is None:
            raise ValueError(f"{arch} needs --cnf: the SEW connect function it was trained with (ADD)")
        if cnf.upper() not in SUPPORTED_CNF:
            raise ValueError(
                f"cnf {cnf!r} is not supported: DANet's sew_add is SEW's ADD; AND and IAND have no "
                "counterpart here"
            )
    elif cnf is not None:
        raise ValueError(f"--cnf applies to sew_* architectures only, not {arch}")
    return f"danet_{_DEPTHS[depth]}", connection


def renamer(connection: str, convs_per_block: int) -> Callable[[str], str | None]:
    """The name map of the module docstring for one connection and block type."""
    rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = []

    def rule(pattern: str) -> Callable[[Callable[[re.Match[str]], str]], None]:
        def add(make: Callable[[re.Match[str]], str]) -> None:
            rules.append((re.compile(pattern), make))

        return add

    def block(m: re.Match[str]) -> str:
        return f"stages.{int(m['s']) - 1}.blocks.{m['b']}"

    rule(r"conv1\.(?P<p>weight)")(lambda m: f"stem.0.{m['p']}")
    rule(r"bn1\.(?P<p>.+)")(lambda m: f"stem.1.{m['p']}")
    rule(r"sn1\.(?P<p>.+)")(lambda m: f"stem.2.{m['p']}")
    prefix = r"layer(?P<s>[1-4])\.(?P<b>\d+)\."
    rule(prefix + r"conv(?P<k>\d)\.(?P<p>.+)")(
        lambda m: f"{block(m)}.branch.layers.{3 * (int(m['k']) - 1)}.{m['p']}"
    )
    rule(prefix + r"bn(?P<k>\d)\.(?P<p>.+)")(
        lambda m: f"{block(m)}.branch.layers.{3 * (int(m['k']) - 1) + 1}.{m['p']}"
    )

    def neuron(m: re.Match[str]) -> str:
        k = int(m["k"])
        if connection == "standard" and k == convs_per_block:
            return f"{block(m)}.out_neuron.{m['p']}"
        return f"{block(m)}.branch.layers.{3 * (k - 1) + 2}.{m['p']}"

    rule(prefix + r"sn(?P<k>\d)\.(?P<p>.+)")(neuron)
    rule(prefix + r"downsample\.(?P<i>[01])\.(?P<p>.+)")(lambda m: f"{block(m)}.shortcut.{m['i']}.{m['p']}")
    rule(prefix + r"downsample_sn\.(?P<p>.+)")(lambda m: f"{block(m)}.shortcut.2.{m['p']}")
    rule(r"fc\.(?P<p>weight|bias)")(lambda m: f"fc.{m['p']}")

    def rename(name: str) -> str | None:
        for pattern, make in rules:
            match = pattern.fullmatch(name)
            if match:
                return make(match)
        return None

    return rename


def convert(
    state_dict: dict[str, Any], arch: str, cnf: str | None, neuron: NeuronSettings
) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(architecture, config, neuron settings, renamed state dict) for a SpikingJelly state dict."""
    architecture, connection = target_of(arch, cnf)
    for needed in ("conv1.weight", "fc.weight"):
        if needed not in state_dict:
            raise WeightMappingError(f"not a SpikingJelly {arch} state dict: it has no {needed!r}")
    config = {
        "num_classes": int(state_dict["fc.weight"].shape[0]),
        "in_channels": int(state_dict["conv1.weight"].shape[1]),
        "stem": "imagenet",
        "connection": connection,
    }
    neuron_settings = neuron.manifest()
    depth = architecture.removeprefix("danet_")
    rename = renamer(connection, 2 if depth in _BASIC else 3)
    shapes = expected_shapes(architecture, config, neuron_settings)
    renamed = rename_exactly(
        state_dict, rename, shapes, origin=f"SpikingJelly {arch}", target=f"{architecture} ({connection})"
    )
    return architecture, config, neuron_settings, renamed


def import_spikingjelly(
    registry: Registry,
    path: Path,
    *,
    arch: str,
    cnf: str | None,
    neuron: NeuronSettings,
    destination: Destination,
) -> Manifest:
    """Register the SpikingJelly checkpoint at ``path`` as a new version of ``destination.name``."""
    architecture, config, neuron_settings, renamed = convert(load_foreign_state_dict(path), arch, cnf, neuron)
    provenance = {
        "imported_from": "spikingjelly",
        "source_architecture": arch + (f" cnf={cnf.upper()}" if cnf else ""),
        "source_file": path.name,
        "source_sha256": sha256_of(path),
    }
    description = (
        f"SpikingJelly {arch}" + (f" (cnf={cnf.upper()})" if cnf else "") + f" imported from {path.name}"
    )
    return register_imported(
        registry,
        destination,
        architecture=architecture,
        config=config,
        neuron=neuron_settings,
        state_dict=renamed,
        provenance=provenance,
        description=description,
    )
