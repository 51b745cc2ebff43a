"""A registry version -> ``<name>.mar`` for TorchServe, with its config.properties and model-config YAML.

The archive holds the safetensors weights, the manifest and ``entry.py`` as the handler; it is
built by ``torch-model-archiver`` (the tool TorchServe users already run). Batching (batch size,
max delay), the response timeout and the input limits come from spikeserve's ``Settings``, so a
TorchServe deployment batches and refuses input as the gateway does.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import Registry, store
from registry.errors import IntegrityError
from workers.torchserve.handler import MANIFEST_FILE, WEIGHTS_FILE

if TYPE_CHECKING:
    from service.settings import Settings

ENTRY_FILE = Path(__file__).with_name("entry.py")
HANDLER_KEYS = (
    "device",
    "neuron_backend",
    "torch_threads",
    "max_image_pixels",
    "max_events",
    "request_timeout_s",
)


@dataclass(frozen=True)
class Ports:
    """TorchServe's three loopback-by-default listeners."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082


@dataclass(frozen=True)
class ExportedArchive:
    """What ``export_torchserve`` wrote: the .mar, its model-config YAML and config.properties."""

    name: str
    version: int
    mar: Path
    model_config: Path
    config_properties: Path


def model_config_yaml(settings: Any, model: str, workers: int) -> str:
    """TorchServe's per-model YAML: workers, batching from ``settings``, and our handler's section."""
    lines = [
        "# written by `spikeserve export torchserve` from spikeserve's settings",
        f"minWorkers: {workers}",
        f"maxWorkers: {workers}",
        f"batchSize: {settings.batch_size_for(model)}",
        # TorchServe counts whole milliseconds; never wait less than spikeserve would
        f"maxBatchDelay: {math.ceil(settings.delay_ms_for(model))}",
        f"responseTimeout: {math.ceil(settings.request_timeout_s)}",
        "handler:",
    ]
    for key in HANDLER_KEYS:
        value = getattr(settings, key)
        if value is not None:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines) + "\n"


def config_properties(settings: Any, store_dir: Path, host: str, ports: Ports) -> str:
    """TorchServe's server config: listeners, the model store and every .mar in it (so exports into one
    folder add up), request size as the gateway's body limit."""
    models = ",".join(f"{mar.stem}={mar.name}" for mar in sorted(store_dir.glob("*.mar")))
    lines = [
        "# written by `spikeserve export torchserve`; start with:",
        "#   torchserve --start --ts-config config.properties --model-store .",
        f"inference_address=http://{host}:{ports.inference}",
        f"management_address=http://{host}:{ports.management}",
        f"metrics_address=http://{host}:{ports.metrics}",
        f"model_store={store_dir}",
        f"load_models={models}",
        f"max_request_size={settings.max_body_bytes}",
        "max_response_size=6553500",
        # spikeserve's own API keys are not TorchServe's; put TorchServe behind what guards it
        "disable_token_authorization=true",
        "install_py_dep_per_model=false",
    ]
    return "\n".join(lines) + "\n"


def export_torchserve(
    registry: Registry,
    ref: str,
    output: Path,
    settings: Settings,
    *,
    workers: int = 1,
    host: str = "127.0.0.1",
    ports: Ports | None = None,
) -> ExportedArchive:
    """Write ``output/<name>.mar``, ``output/<name>.yaml`` and ``output/config.properties`` for ``ref``.

    The weights are checked against the manifest's sha256 before they are packed.
    """
    manifest = registry.resolve(ref)
    blob = registry.weights_path(manifest)
    digest, size = store.hash_file(blob) if blob.is_file() else ("", -1)
    if (digest, size) != (manifest.weights.sha256, manifest.weights.size):
        raise IntegrityError(f"the weights of {manifest.name}:{manifest.version} at {blob} fail their check")
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    name = manifest.name
    model_config = output / f"{name}.yaml"
    model_config.write_text(model_config_yaml(settings, name, workers))
    with tempfile.TemporaryDirectory(prefix="spikeserve-mar-") as staging_dir:
        staging = Path(staging_dir)
        shutil.copyfile(blob, staging / WEIGHTS_FILE)
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        shutil.copyfile(ENTRY_FILE, staging / "handler.py")
        _archive(
            [
                "--model-name", name,
                "--version", str(manifest.version),
                "--serialized-file", str(staging / WEIGHTS_FILE),
                "--handler", str(staging / "handler.py"),
                "--extra-files", str(staging / MANIFEST_FILE),
                "--config-file", str(model_config),
                "--export-path", str(output),
                "--force",
            ]
        )  # fmt: skip
    properties = output / "config.properties"
    properties.write_text(config_properties(settings, output, host, ports or Ports()))
    return ExportedArchive(name, manifest.version, output / f"{name}.mar", model_config, properties)


def _archive(arguments: list[str]) -> None:
    """Run torch-model-archiver (the one installed beside this Python)."""
    command = [sys.executable, "-m", "model_archiver.model_packaging", *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError as exc:  # pragma: no cover - sys.executable always exists
        raise RuntimeError(f"cannot run torch-model-archiver: {exc}") from exc
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        if any("No module named model_archiver" in line for line in detail):
            raise RuntimeError("torch-model-archiver is not installed: pip install torch-model-archiver")
        raise RuntimeError(f"torch-model-archiver failed: {' '.join(detail[-3:])}")
