"""Reading an uploaded file from a request: the raw body, or the multipart field ``file``.

The body-limit middleware (service/limits.py) already bounds what ``request.body()`` and
``request.form()`` can read.
"""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from service.errors import BadRequestError

UPLOAD_FIELD = "file"


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_upload(request: Request, field: str = UPLOAD_FIELD) -> tuple[bytes, str | None]:
    """(bytes, content type) of the uploaded file. The content type is None when the client sent none."""
    content_type = request.headers.get("content-type")
    if _media_type(content_type) != "multipart/form-data":
        return await request.body(), content_type
    form = await request.form()
    try:
        parts = form.getlist(field)
        if len(parts) > 1:  # taking one of them would answer for a file the client may not mean
            raise BadRequestError(f"the multipart upload holds {len(parts)} '{field}' parts; send one")
        upload = parts[0] if parts else None
        if not isinstance(upload, UploadFile):
            raise BadRequestError(f"a multipart upload needs the file in a field named '{field}'")
        data = await upload.read()
        return data, upload.content_type
    finally:
        await form.close()
