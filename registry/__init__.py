"""What a checkpoint IS: manifests, versions, aliases, content-addressed safetensors weights.

``Registry(root)`` works on a plain folder, with no server. Importing this package does not import
torch (the gateway lists models without loading one); ``Registry.load`` imports it when called.
"""

from registry.errors import (
    BundleError,
    IntegrityError,
    InvalidManifestError,
    InvalidNameError,
    InvalidWeightsError,
    LoadError,
    LockTimeoutError,
    ModelNotFoundError,
    RegistryError,
    VersionInUseError,
)
from registry.maintenance import GcReport, Problem, VerifyReport
from registry.manifest import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    EventInput,
    ImageInput,
    Manifest,
    Metric,
    TimeSteps,
    WeightsInfo,
)
from registry.refs import Ref, parse_ref
from registry.registry import ModelSummary, Registry

__all__ = [
    "ALIAS_PATTERN",
    "MODEL_NAME_PATTERN",
    "BundleError",
    "EventInput",
    "GcReport",
    "ImageInput",
    "IntegrityError",
    "InvalidManifestError",
    "InvalidNameError",
    "InvalidWeightsError",
    "LoadError",
    "LockTimeoutError",
    "Manifest",
    "Metric",
    "ModelNotFoundError",
    "ModelSummary",
    "Problem",
    "Ref",
    "Registry",
    "RegistryError",
    "TimeSteps",
    "VerifyReport",
    "VersionInUseError",
    "WeightsInfo",
    "parse_ref",
]
