"""Reading a job's multipart body strictly, so a malformed request is refused with its reason.

Starlette's ``request.form()`` is lenient where the studio must not be:

* a text part that is not valid UTF-8 is decoded as Latin-1 without a word, so a prompt sent in
  another encoding would reach the model as mojibake ("Ã¤" for "ä") and be billed;
* a body that is neither multipart nor a urlencoded form (JSON, say) parses as an empty form,
  and the person is told "the prompt is empty" instead of "send multipart/form-data".

:func:`job_form` keeps Starlette's parser (its limits on files, fields and part sizes, its
spooling of file parts to disk) and adds the two refusals. The ASGI size cap
(:class:`app.web.middleware.BodyLimit`) still runs in front of it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.errors import InputError


class _NotUtf8(MultiPartException):
    pass


class _StrictMultiPartParser(MultiPartParser):
    """Starlette's parser, refusing text parts that are not UTF-8 instead of guessing Latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None and self._charset == "utf-8":
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _NotUtf8(
                    f"The field '{part.field_name}' is not valid UTF-8 text (byte {exc.start + 1} "
                    "cannot be decoded); send text fields encoded as UTF-8."
                ) from exc
        super().on_part_end()


@asynccontextmanager
async def job_form(
    request: Request, *, max_files: int = 10, max_fields: int = 50
) -> AsyncIterator[FormData]:
    """The parsed form of a ``multipart/form-data`` request; its spooled files closed at the end."""
    raw_type = request.headers.get("content-type")
    content_type, _ = parse_options_header(raw_type)
    if content_type == b"application/x-www-form-urlencoded":
        # Cannot carry files, so it is refused further on for its missing images; parse it
        # only so that the refusal names the field the person got wrong.
        async with request.form(max_files=0, max_fields=max_fields) as form:
            yield form
        return
    if content_type != b"multipart/form-data":
        sent = content_type.decode("latin-1") if content_type else "no content type"
        raise InputError(
            "not_multipart",
            "A new job is sent as multipart/form-data with the fields 'images' (1 to 3 files) "
            f"and 'prompt'; this request was sent as {sent}.",
            415,
        )
    parser = _StrictMultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_fields
    )
    try:
        form = await parser.parse()
    except _NotUtf8 as exc:
        raise InputError("invalid_encoding", exc.message) from exc
    except MultiPartException as exc:
        raise InputError(
            "invalid_multipart", f"The request body is not valid multipart/form-data: {exc.message}"
        ) from exc
    try:
        yield form
    finally:
        await form.close()
