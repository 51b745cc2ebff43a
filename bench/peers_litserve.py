"""danet-mnist (or any image model of a registry) on LitServe: a LitAPI around spikeserve's engine.

Started by bench/peers.py as its own process: ``python bench/peers_litserve.py --registry zoo
--model danet-mnist --port P``. ``POST /predict`` with a raw image body answers the gateway's JSON
(``service.inference.answer``). LitServe batches with ``max_batch_size`` and ``batch_timeout``
(the same delay as the other servers); each LitServe batch is one ``Engine.run_batch``.
"""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation as a class
import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import litserve
import litserve.server
from fastapi import Request

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

_prepare_request = litserve.server.BaseRequestHandler._prepare_request


async def _raw_body(self: Any, request: Any, request_type: Any) -> Any:
    """LitServe reads every plain body as JSON; the peers get the same raw PNG bytes, so read them raw
    (in LitServe's API-server process, as its own JSON parsing would run there)."""
    if request_type == Request and request.headers.get("content-type", "").startswith("image/"):
        return {"body": await request.body(), "content_type": request.headers["content-type"]}
    return await _prepare_request(self, request, request_type)


# module level: LitServe's API servers are spawned processes that import this file again
litserve.server.BaseRequestHandler._prepare_request = _raw_body  # type: ignore[method-assign]


class SpikeserveLitAPI(litserve.LitAPI):
    """decode_request: PNG bytes -> InferenceRequest; predict: one engine batch; encode: the v1 JSON."""

    def __init__(self, registry: Path, model: str, backend: str, torch_threads: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.torch_threads = torch_threads
        self.registry_root = registry
        self.model = model
        self.backend = backend

    def setup(self, device: str) -> None:
        import torch

        from registry import Registry
        from service.settings import Settings
        from workers.engine import Engine

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        registry = Registry(self.registry_root)
        self.manifest = registry.resolve(self.model)
        self.settings = Settings()
        self.engine = Engine(registry, backend=self.backend, worker_id="litserve")
        self.engine.ensure_loaded(self.manifest.name, self.manifest.version)

    def decode_request(self, request: Request) -> Any:
        from service.decoding import decode_image
        from workers.protocol import InferenceRequest

        started = time.perf_counter()
        settings = self.settings
        decoded = decode_image(
            request["body"],
            request["content_type"],
            self.manifest.input,
            settings.max_image_pixels,
            settings.max_decoded_bytes,
        )
        return started, InferenceRequest(
            request_id=uuid.uuid4().hex,
            model_name=self.manifest.name,
            model_version=self.manifest.version,
            kind="image",
            array=decoded.array,
            time_steps=self.manifest.time_steps.default,
        )

    def batch(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, batch: list[Any]) -> list[Any]:
        if not isinstance(batch, list):  # a batch of one that LitServe did not wrap
            batch = [batch]
        results = self.engine.run_batch([request for _, request in batch])
        return [(started, result) for (started, _), result in zip(batch, results, strict=True)]

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def encode_response(self, output: Any) -> dict[str, Any]:
        from service.inference import answer

        started, result = output
        return answer(result, [], started, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=REPO_ROOT / "zoo")
    parser.add_argument("--model", default="danet-mnist")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: torch's choice")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    api = SpikeserveLitAPI(
        args.registry,
        args.model,
        args.backend,
        args.torch_threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.max_delay_ms / 1000.0,
    )
    server = litserve.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=30)
    server.run(
        host="127.0.0.1", port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
