"""Errors of reading a request body: the bytes, their type and their size. The error table in
service/errors.py answers each with its status."""

from __future__ import annotations

from workers.errors import SpikeserveError


class UndecodableInputError(SpikeserveError):
    """The bytes are not a valid image or recording of the stated format: HTTP 400."""

    code = "undecodable_input"


class UnsupportedMediaTypeError(SpikeserveError):
    """Content type or file format not accepted by this route: HTTP 415."""

    code = "unsupported_media_type"


class PayloadTooLargeError(SpikeserveError):
    """Body, pixel count, event count or expanded size over its limit: HTTP 413."""

    code = "payload_too_large"
