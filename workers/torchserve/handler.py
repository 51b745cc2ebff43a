"""What a TorchServe worker runs for a ``.mar`` that ``spikeserve export torchserve`` wrote.

TorchServe hands the handler one batch at a time: a list of rows, each with the raw request body
under ``body`` (or a multipart ``file``/``data`` field) and the query parameters under their
names. The handler decodes each body with the gateway's own decoders (images: PNG, JPEG, .npy ->
[C, H, W] float32 in [0, 1]; event recordings -> [N] events fitted to the model's sensor), runs
every decodable row through ``Engine.run_batch`` as ONE engine batch, and answers each row with
the JSON a spikeserve gateway gives (``service.inference.answer``). A row that fails gets the
gateway's status (``service.errors.STATUS_BY_CODE``) through TorchServe's per-request status and
the body ``{"error": {"code", "message"}}``; the other rows of its batch are answered normally.

Limits, device and torch threads come from the ``handler`` section of the model-config YAML
(written by the export from ``Settings``), with ``SPIKESERVE_*`` variables under them.
The gateway's decoders are torch-free and carry no HTTP framework, which is why this adapter of
another runtime may use them: input means the same thing in every runtime.
"""

from __future__ import annotations

import http
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import loading
from registry.errors import ModelNotFoundError, RegistryError
from registry.manifest import Manifest
from service.decoding import decode_events, decode_image, fit_to_sensor
from service.errors import DEFAULT_RETRY_AFTER_S, status_for
from service.inference import answer
from service.settings import Settings
from workers.batcher import group_by_batch_key
from workers.errors import SpikeserveError
from workers.options import RunOptions, check_options
from workers.protocol import TELEMETRY_LEVELS, InferenceRequest, InferenceResult, new_request_id
from workers.runtime import prepare_inference_process

if TYPE_CHECKING:
    import torch.nn as nn

log = logging.getLogger("spikeserve.torchserve")

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
BODY_FIELDS = ("body", "data", "file")  # raw body, TorchServe's generic name, the multipart field
MAX_TOP_K = 1000
FITS = ("crop", "scale")


class InvalidRequestError(SpikeserveError):
    """A query parameter that does not parse (what FastAPI's validation answers at the gateway): 422."""

    code = "invalid_request"


class MarRegistry:
    """The one version a ``.mar`` holds, seen by the engine as a registry (``load`` by reference).

    ``manifest`` comes from the archive's manifest.json; the weights are checked against its
    sha256 at load, exactly as the registry checks them.
    """

    def __init__(self, manifest: Manifest, weights: Path) -> None:
        self.manifest = manifest
        self.weights = weights

    def load(self, ref: str, device: str = "cpu") -> tuple[Manifest, nn.Module]:
        expected = f"{self.manifest.name}:{self.manifest.version}"
        if ref != expected:
            raise ModelNotFoundError(f"this archive holds {expected}, not {ref}")
        weights = loading.read_verified(self.manifest, self.weights)
        return self.manifest, loading.build_model(self.manifest, weights, device)


def handler_settings(section: dict[str, Any] | None) -> Settings:
    """``Settings`` from the YAML ``handler`` section; ``SPIKESERVE_*`` variables fill what it omits."""
    fields = set(Settings.model_fields)
    return Settings(**{key: value for key, value in (section or {}).items() if key in fields})


class SpikeserveHandler:
    """TorchServe's view of one registered version: ``initialize(context)``, then ``handle`` per batch."""

    def __init__(self) -> None:
        self.initialized = False
        self.manifest: Manifest | None = None
        self.settings = Settings()
        self.engine: Any = None  # workers.engine.Engine; torch arrives in initialize

    def initialize(self, context: Any) -> None:
        """Load, check and warm up the archive's network before TorchServe sends the first batch."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        yaml_config = getattr(context, "model_yaml_config", None) or {}
        self.settings = handler_settings(yaml_config.get("handler"))
        # bodies reach decode_image/decode_events as the client's bytes, whatever their content type
        os.environ["TS_DECODE_INPUT_REQUEST"] = "false"
        manifest = Manifest.model_validate_json((model_dir / MANIFEST_FILE).read_text())

        from workers.engine import Engine

        prepare_inference_process(self.settings.torch_threads, self.settings.keep_freed_memory)
        device = self.settings.device
        gpu_id = properties.get("gpu_id")
        if device == "cuda" and gpu_id is not None:
            device = f"cuda:{gpu_id}"  # TorchServe assigns each worker its GPU
        self.engine = Engine(
            MarRegistry(manifest, model_dir / WEIGHTS_FILE),
            device=device,
            backend=self.settings.neuron_backend,
            worker_id=f"torchserve-{os.getpid()}",
        )
        self.engine.ensure_loaded(manifest.name, manifest.version)
        self.manifest = manifest
        self.initialized = True
        log.info("serving %s:%d on %s", manifest.name, manifest.version, device)

    def handle(self, rows: list[dict[str, Any]], context: Any) -> list[bytes]:
        """One TorchServe batch -> one JSON body per row, in order (one engine batch for all rows)."""
        started = time.perf_counter()
        bodies: list[bytes] = [b""] * len(rows)
        pending: list[tuple[int, InferenceRequest, list[str]]] = []
        for index, row in enumerate(rows):
            try:
                request, warnings = self._request(_Fields(row, context, index))
            except (SpikeserveError, RegistryError) as exc:
                bodies[index] = _error(context, index, exc.code, exc.message)
                continue
            pending.append((index, request, warnings))
        requests = [request for _, request, _ in pending]
        results: list[InferenceResult | None] = [None] * len(pending)
        for group in group_by_batch_key(requests):  # rows asking for different T run apart
            for position, result in zip(
                group, self.engine.run_batch([requests[i] for i in group]), strict=True
            ):
                results[position] = result
        for (index, _, warnings), result in zip(pending, results, strict=True):
            assert result is not None
            if result.error is not None:
                bodies[index] = _error(context, index, *result.error)
            else:
                context.set_response_content_type(index, "application/json")
                bodies[index] = json.dumps(answer(result, warnings, started, None)).encode()
        return bodies

    def _request(self, fields: _Fields) -> tuple[InferenceRequest, list[str]]:
        """One row -> the engine's request and the decoders' warnings; typed errors for bad input."""
        manifest = self.manifest
        assert manifest is not None
        options = _options(manifest, fields)
        data = fields.body()
        content_type = fields.content_type()
        settings = self.settings
        if manifest.input.kind == "image":
            decoded = decode_image(
                data, content_type, manifest.input, settings.max_image_pixels, settings.max_decoded_bytes
            )
            array, warnings = decoded.array, list(decoded.warnings)
        else:
            events = decode_events(data, content_type, fields.text("format"), settings.max_events)
            fit = fields.text("fit")
            if fit is not None and fit not in FITS:
                raise InvalidRequestError(f"fit: must be 'crop' or 'scale', got {fit!r}")
            array, fit_warnings = fit_to_sensor(events, manifest.input, fit)
            warnings = [*events.warnings, *fit_warnings]
        request = InferenceRequest(
            request_id=new_request_id(),  # the server mints the ids it relies on
            model_name=manifest.name,
            model_version=manifest.version,
            kind=options.kind,
            array=array,
            time_steps=options.time_steps,
            telemetry=options.telemetry,
            top_k=options.top_k,
            deadline=time.time() + settings.request_timeout_s,
        )
        return request, warnings


class _Fields:
    """One row's body, options and headers. TorchServe puts multipart form fields, and the query
    string of ``/<name>/predict`` and ``/invocations`` (not of ``/predictions/<name>``, which it
    drops), into the row; a part's content type into the headers under the part's name. A body
    whose type is text or JSON arrives decoded unless TS_DECODE_INPUT_REQUEST is false."""

    def __init__(self, row: dict[str, Any], context: Any, index: int) -> None:
        self.row = row
        self.headers = {
            str(key).lower(): value
            for key, value in (context.request_processor[index].get_request_properties() or {}).items()
        }

    def _body_field(self) -> str | None:
        return next((name for name in BODY_FIELDS if self.row.get(name) is not None), None)

    def content_type(self) -> str | None:
        """The body's own type: the multipart part's, else the request's ``Content-Type``."""
        field = self._body_field()
        part = self.headers.get(field.lower()) if field is not None else None
        if isinstance(part, dict) and part.get("content-type"):
            return str(part["content-type"])
        value = self.headers.get("content-type")
        return None if value is None else str(value)

    def body(self) -> bytes:
        field = self._body_field()
        value = self.row[field] if field is not None else b""
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, str):
            return value.encode()
        return json.dumps(value).encode()  # a JSON body TorchServe parsed: its bytes again

    def text(self, name: str) -> str | None:
        value = self.row.get(name)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8", errors="replace")
        return str(value)

    def integer(self, name: str, low: int, high: int) -> int | None:
        text = self.text(name)
        if text is None:
            return None
        try:
            value = int(text)
        except ValueError:
            raise InvalidRequestError(f"{name}: must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise InvalidRequestError(f"{name}: must be in {low}..{high}, got {value}")
        return value


def _options(manifest: Manifest, fields: _Fields) -> RunOptions:
    """The query options, checked as the gateway checks them (its ranges, its defaults)."""
    time_steps = fields.integer("time_steps", 1, 256)
    top_k = fields.integer("top_k", 1, MAX_TOP_K)
    telemetry = fields.text("telemetry") or "summary"
    if telemetry not in TELEMETRY_LEVELS:
        raise InvalidRequestError(
            f"telemetry: must be one of {', '.join(TELEMETRY_LEVELS)}, got {telemetry!r}"
        )
    return check_options(manifest, manifest.input.kind, time_steps, 5 if top_k is None else top_k, telemetry)


def _error(context: Any, index: int, code: str, message: str) -> bytes:
    """Set the row's status (the gateway's for ``code``) and return the project's error body."""
    status = status_for(code)
    context.set_response_status(code=status, phrase=http.HTTPStatus(status).phrase, idx=index)
    context.set_response_content_type(index, "application/json")
    if status == 503:
        context.set_response_header(index, "Retry-After", str(DEFAULT_RETRY_AFTER_S))
    if status >= 500:
        log.error("%s: %s", code, message)
    return json.dumps({"error": {"code": code, "message": message}}).encode()
