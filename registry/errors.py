"""Typed errors of the registry. The service maps each to one HTTP status in its handler table.

The registry imports nothing from workers/ or service/, so it defines its own hierarchy; each class
carries a stable machine ``code`` beside a message a person can act on.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error the registry raises on purpose."""

    code = "registry_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFoundError(RegistryError, LookupError):
    """Unknown model, version or alias."""

    code = "model_not_found"


class InvalidNameError(RegistryError, ValueError):
    """A model name, alias or reference that breaks the documented pattern (see registry.manifest)."""

    code = "invalid_name"


class InvalidManifestError(RegistryError, ValueError):
    """Manifest fields that do not validate (time steps out of order, labels vs classes, ...)."""

    code = "invalid_manifest"


class InvalidWeightsError(RegistryError, ValueError):
    """A weight file that is not a valid safetensors file, or a .pt file that is not plain tensors."""

    code = "invalid_weights"


class IntegrityError(RegistryError):
    """Stored bytes differ from what the manifest promises (sha256 or size), or a manifest is unreadable."""

    code = "integrity_error"


class VersionInUseError(RegistryError):
    """Deleting a version that an alias points at, without ``force``."""

    code = "version_in_use"


class BundleError(RegistryError, ValueError):
    """An export bundle that is malformed or unsafe (absolute paths, '..', links, devices, oversize)."""

    code = "invalid_bundle"


class LoadError(RegistryError):
    """A checkpoint that cannot be built: unknown architecture, or weights that do not fit it strictly."""

    code = "load_failed"


class LockTimeoutError(RegistryError, TimeoutError):
    """Another writer held the registry lock for longer than the timeout."""

    code = "registry_locked"


def describe_validation_error(exc: Exception) -> str:
    """A pydantic ValidationError as one line, ``field.path: message; ...`` (other errors: str)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    parts = []
    for error in errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)
