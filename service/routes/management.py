"""v1 management, behind the admin bearer token: list, show, upload, alias, delete.

Registry writes take a file lock and fsync, so they run off the event loop. A running server
sees every change on its next request (the resolver follows the registry's generation counter).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, BinaryIO

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from registry.errors import describe_validation_error
from registry.manifest import Manifest
from service.auth import require_admin
from service.errors import BadRequestError
from service.schemas import AliasBody, UploadManifest
from service.state import ServiceState, get_state
from workers.errors import InvalidInputError

router = APIRouter(tags=["management"], dependencies=[Depends(require_admin)])


def _plain(value: Any) -> Any:
    """A registry object (pydantic model or dataclass) as JSON-ready data."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.loads(json.dumps(dataclasses.asdict(value), default=str))
    return value


def _loaded_versions(state: ServiceState, name: str) -> list[int]:
    return sorted(v for n, v in state.pool.loaded_models() if n == name)


def _failed_versions(state: ServiceState, name: str) -> dict[str, str]:
    """Version -> why it cannot be loaded (its requests are answered 503 ``load_failed``)."""
    failed = {}
    for ref, reason in state.pool.failed_models().items():
        model, _, version = ref.rpartition(":")
        if model == name:
            failed[version] = reason
    return failed


@router.get("/v1/models", name="list_models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model in the registry, with its versions, aliases, and versions that failed to load."""
    state = get_state(request)
    summaries = await anyio.to_thread.run_sync(state.registry.list)
    return {
        "models": [
            {**_plain(summary), "failed_versions": _failed_versions(state, summary.name)}
            for summary in summaries
        ]
    }


@router.get("/v1/models/{name}", name="show_model")
async def show_model(request: Request, name: str) -> dict[str, Any]:
    """One model: every version's manifest, its aliases, and the versions loaded in this process."""
    state = get_state(request)

    def read() -> tuple[list[Manifest], dict[str, int]]:
        return state.registry.versions(name), state.registry.aliases(name)

    versions, aliases = await anyio.to_thread.run_sync(read)
    return {
        "name": name,
        "aliases": aliases,
        "versions": [_plain(manifest) for manifest in versions],
        "loaded_versions": _loaded_versions(state, name),
        "failed_versions": _failed_versions(state, name),
    }


@router.post("/v1/models", status_code=201, name="upload_model")
async def upload_model(request: Request) -> JSONResponse:
    """Register a new version: multipart ``weights`` (.safetensors) and ``manifest`` (JSON text or file).

    The version is committed, and its aliases move, only once the weights loaded strictly into the
    architecture and one forward on the default input ran; otherwise 422 ``invalid_weights`` and the
    registry is exactly as before."""
    state = get_state(request)
    form = await request.form()
    try:
        weights = form.get("weights")
        if not isinstance(weights, UploadFile):
            raise BadRequestError(
                "upload the weights as a multipart file field named 'weights' (.safetensors)"
            )
        raw_manifest = form.get("manifest")
        if raw_manifest is None:
            raise BadRequestError("upload the manifest as a multipart field named 'manifest' (JSON)")
        text = await raw_manifest.read() if isinstance(raw_manifest, UploadFile) else raw_manifest
        try:
            fields = UploadManifest.model_validate_json(text)
        except ValidationError as exc:
            raise InvalidInputError(f"manifest: {describe_validation_error(exc)}") from None
        # straight from the parsed upload into the registry's staging: nothing of it lies outside the
        # registry, where a killed server would leave it for nobody to remove
        upload = weights.file
        manifest = await anyio.to_thread.run_sync(lambda: _register(state, fields, upload))
    finally:
        await form.close()
    return JSONResponse(_plain(manifest), status_code=201)


def _register(state: ServiceState, fields: UploadManifest, weights: BinaryIO) -> Manifest:
    """Register the upload; the registry checks that it loads and runs before anything is visible."""
    return state.registry.register(
        fields.name,
        architecture=fields.architecture,
        config=fields.config,
        neuron=fields.neuron,
        time_steps=fields.time_steps,
        input=fields.input,
        labels=fields.labels,
        weights=weights,
        metrics=fields.metrics,
        description=fields.description,
        tags=fields.tags,
        aliases=tuple(fields.aliases),
    )


@router.put("/v1/models/{name}/aliases/{alias}", name="set_alias")
async def set_alias(request: Request, name: str, alias: str, body: AliasBody) -> dict[str, Any]:
    """Point ``alias`` at ``body.version``; requests for ``name@alias`` follow on their next call."""
    state = get_state(request)

    def move() -> dict[str, int]:
        state.registry.set_alias(name, alias, body.version)
        return state.registry.aliases(name)

    aliases = await anyio.to_thread.run_sync(move)
    return {"name": name, "alias": alias, "version": body.version, "aliases": aliases}


@router.delete("/v1/models/{name}/aliases/{alias}", name="remove_alias")
async def remove_alias(request: Request, name: str, alias: str) -> dict[str, Any]:
    state = get_state(request)

    def remove() -> dict[str, int]:
        state.registry.remove_alias(name, alias)
        return state.registry.aliases(name)

    return {"name": name, "aliases": await anyio.to_thread.run_sync(remove)}


@router.delete("/v1/models/{name}/versions/{version}", name="delete_version")
async def delete_version(
    request: Request,
    name: str,
    version: int,
    force: bool = Query(False, description="delete even while an alias points at it"),
) -> dict[str, Any]:
    """Delete one version (409 while an alias points at it, unless ``force``)."""
    state = get_state(request)
    await anyio.to_thread.run_sync(lambda: state.registry.delete_version(name, version, force))
    state.pool.unload_model(name, version)
    return {"deleted": {"name": name, "version": version}}
