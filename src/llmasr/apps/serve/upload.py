"""Streaming multipart/form-data reader with size limits enforced while the body arrives.

Starlette's form parser spools uploads to temporary files and has no total-size limit, so a 10 GB
upload would be read (to disk) before the app could refuse it. Here the body is fed chunk by chunk to
python-multipart and the request is refused (413) as soon as it passes the limit; the audio file is
kept in memory (bounded by that limit) and nothing ever touches the disk.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

#: longest value of a text field (prompts and term lists are small)
MAX_FIELD_BYTES = 64 * 1024
#: most parts in one request
MAX_PARTS = 64
#: room for multipart boundaries, part headers and text fields on top of the file limit
BODY_OVERHEAD_BYTES = 1024 * 1024


_EXTENDED = re.compile(rb"filename\*\s*=\s*([A-Za-z0-9_-]*)'[^']*'([^;\s]+)", re.IGNORECASE)


def extended_filename(disposition: bytes) -> str | None:
    """The RFC 5987/7578 `filename*=UTF-8''Gr%C3%BC%C3%9Fe.wav` form of a part's file name (clients send
    it for non-ASCII names; python-multipart ignores it), or None when the header has none."""
    match = _EXTENDED.search(disposition)
    if match is None:
        return None
    charset = match.group(1).decode("ascii", "replace") or "utf-8"
    try:
        return urllib.parse.unquote(
            match.group(2).decode("ascii", "replace"), encoding=charset, errors="replace"
        )
    except LookupError:  # an unknown charset name
        return urllib.parse.unquote(match.group(2).decode("ascii", "replace"), errors="replace")


class FormError(Exception):
    """A request body that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass
class Form:
    """Text fields in arrival order (names may repeat) and the file part, if one was sent."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    file: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    #: names of parts that are neither known fields nor the file, in arrival order, without repeats
    unknown: list[str] = field(default_factory=list)
    #: how many times the file field was sent
    file_parts: int = 0


class _Reader:
    def __init__(self, file_field: str, known: set[str], max_file_bytes: int) -> None:
        self.file_field = file_field
        self.known = known
        self.max_file_bytes = max_file_bytes
        self.form = Form()
        self.file = bytearray()
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._kind = "skip"  # "file", "field" or "skip"
        self._value = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise FormError(400, f"too many form parts (more than {MAX_PARTS})", code="too_many_parts")
        self._headers = {}
        self._value = bytearray()
        self._kind = "skip"

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition = self._headers.get(b"content-disposition", b"")
        _, options = parse_options_header(disposition)
        raw_name = options.get(b"name")
        if raw_name is None:
            raise FormError(
                400, "a multipart part has no name (Content-Disposition name=...)", code="bad_form"
            )
        self._name = raw_name.decode("utf-8", "replace")
        if self._name == self.file_field:
            self._kind = "file"
            self.form.file_parts += 1
            extended = extended_filename(disposition)  # RFC 6266: filename* wins over filename
            if extended is not None:
                self.form.filename = extended
            elif b"filename" in options:
                self.form.filename = options[b"filename"].decode("utf-8", "replace")
            content_type = self._headers.get(b"content-type")
            self.form.content_type = content_type.decode("latin-1") if content_type else None
        elif self._name in self.known:
            self._kind = "field"
        else:
            self._kind = "skip"
            if self._name not in self.form.unknown:
                self.form.unknown.append(self._name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "file":
            if len(self.file) + (end - start) > self.max_file_bytes:
                raise FormError(
                    413,
                    f"file is larger than the upload limit of {_size(self.max_file_bytes)}",
                    param=self.file_field,
                    code="file_too_large",
                )
            self.file += data[start:end]
        elif self._kind == "field":
            if len(self._value) + (end - start) > MAX_FIELD_BYTES:
                raise FormError(
                    400,
                    f"form field '{self._name}' is longer than {MAX_FIELD_BYTES // 1024} KiB",
                    param=self._name,
                    code="field_too_long",
                )
            self._value += data[start:end]

    def on_part_end(self) -> None:
        if self._kind == "field":
            self.form.fields.append((self._name, self._value.decode("utf-8", "replace")))
        self._value = bytearray()

    def callbacks(self) -> Mapping[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }


def boundary_of(content_type: str | None) -> bytes:
    """The multipart boundary, or FormError 415 for a body that is not multipart/form-data."""
    if not content_type:
        raise FormError(
            415, "send the request as multipart/form-data (no Content-Type given)", code="bad_media"
        )
    media, options = parse_options_header(content_type)
    if media == b"application/x-www-form-urlencoded":
        # A plain form cannot carry a file: the real problem is the missing audio.
        raise FormError(
            422,
            "the form field 'file' (the audio file) is required; send it as multipart/form-data",
            param="file",
            code="missing_field",
        )
    if media != b"multipart/form-data":
        raise FormError(
            415,
            f"send the request as multipart/form-data, not {media.decode('latin-1', 'replace')}",
            code="unsupported_media_type",
        )
    boundary = options.get(b"boundary")
    if not boundary:
        raise FormError(400, "multipart/form-data without a boundary", code="bad_form")
    return boundary


async def read_form(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    *,
    file_field: str,
    known: set[str],
    max_file_bytes: int,
) -> Form:
    """Parse a multipart body from `stream`, refusing it (FormError) as soon as it breaks a limit.

    The declared Content-Length is checked before anything is read; the bytes actually received are
    counted too (chunked uploads declare none). Parts named neither `file_field` nor in `known` are
    skipped unread and listed in `Form.unknown`, so the caller can name them all.
    """
    boundary = boundary_of(content_type)
    max_body = max_file_bytes + BODY_OVERHEAD_BYTES
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise FormError(400, "Content-Length is not a number", code="bad_request") from None
        if declared > max_body:
            raise FormError(
                413,
                f"request body of {_size(declared)} is larger than the upload limit "
                f"of {_size(max_file_bytes)}",
                param=file_field,
                code="file_too_large",
            )
    reader = _Reader(file_field, known, max_file_bytes)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > max_body:
                raise FormError(
                    413,
                    f"request body is larger than the upload limit of {_size(max_file_bytes)}",
                    param=file_field,
                    code="file_too_large",
                )
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise FormError(400, f"malformed multipart/form-data body ({exc})", code="bad_form") from None
    form = reader.form
    if form.file_parts:
        form.file = bytes(reader.file)
        form.filename = os.path.basename((form.filename or "").replace("\\", "/"))[:200] or "upload"
    return form


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.4g} MB"
    if n >= 1024:
        return f"{n / 1024:.4g} KB"
    return f"{n} bytes"
