"""The one codec between a typed error and its ``(code, message)`` on the wire.

The engine encodes what went wrong into ``InferenceResult.error`` (a stream worker into
``StreamAnswer.error``); both pools (embedded and Redis)
decode it back with ``raise_for_error``, so one worker error raises the same class, and therefore
gets the same HTTP status and code, whichever way the request ran. Codes are unique across the
worker and registry families; a code this gateway does not know (a newer worker) is answered as
``inference_failed`` naming it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from registry import errors as registry_errors
from registry.importers import errors as importer_errors
from workers import errors as worker_errors
from workers.errors import InferenceFailedError, InvalidInputError, SpikeserveError

TypedError = SpikeserveError | registry_errors.RegistryError


def _classes() -> dict[str, type[TypedError]]:
    found: dict[str, type[TypedError]] = {}
    families = (
        (worker_errors, SpikeserveError),
        (registry_errors, registry_errors.RegistryError),
        (importer_errors, registry_errors.RegistryError),
    )
    for module, base in families:
        for value in vars(module).values():
            # a subclass that keeps its parent's code (an importer's) decodes as the parent
            if isinstance(value, type) and issubclass(value, base) and "code" in vars(value):
                code = str(value.code)
                if code in found and found[code] is not value:
                    raise RuntimeError(f"error code {code!r} names both {found[code]} and {value}")
                found[code] = value
    return found


ERROR_CLASSES: dict[str, type[TypedError]] = _classes()


def encode_error(exc: BaseException, unexpected: str = InferenceFailedError.code) -> tuple[str, str]:
    """``(code, message)`` of ``exc``. ``unexpected``: the code of an exception that is not typed
    (a ``ValueError`` while encoding an input is the input's fault: ``invalid_input``; anything else
    that is not typed is ``inference_failed``)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, SpikeserveError | registry_errors.RegistryError):
        return exc.code, message
    if unexpected == InvalidInputError.code and not isinstance(exc, ValueError):
        unexpected = InferenceFailedError.code
    return unexpected, message


def decode_error(code: str, message: str) -> TypedError:
    """The typed error that ``(code, message)`` stands for."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return InferenceFailedError(f"{code}: {message}")
    return cls(message)


class _Answer(Protocol):
    @property
    def error(self) -> tuple[str, str] | None: ...


AnswerT = TypeVar("AnswerT", bound=_Answer)


def raise_for_error(result: AnswerT) -> AnswerT:
    """Return ``result`` (an ``InferenceResult`` or a ``StreamAnswer``), or raise the typed error it
    carries."""
    if result.error is None:
        return result
    raise decode_error(*result.error)
