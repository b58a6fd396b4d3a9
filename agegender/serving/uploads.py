"""A request's images: its body read within --max-bytes, split into the repeated multipart field `image`
(or taken whole when raw), and each decoded within --max-pixels; what cannot be read is an ApiError."""
from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser, parse_options_header

from agegender.data.image import TOO_LARGE, TRUNCATED, ImageError, decode_image
from agegender.serving.api_errors import ApiError

MAX_IMAGES = 8   # repeated `image` fields in one request
MAX_FIELDS = 32  # multipart fields of any name in one request


def media_type(request: Request) -> str:
    """The request's media type, lower case, without its parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused (413) as soon as it passes `max_bytes`, so a huge body is never held."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, "body_too_large", f"the body is {int(length)} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_images(request: Request, body: bytes, max_bytes: int) -> list[tuple[bytes, str]]:
    """(bytes, name) of each image of the request: the repeated multipart field `image` (a file, or a plain
    field holding the bytes), or the raw body. Media types are compared case-insensitively."""
    if media_type(request) != "multipart/form-data":
        return [(body, "-")]
    # the parser decodes plain fields with the body's charset: latin-1 maps every byte to one character,
    # so an image sent as a plain field comes back intact
    raw_ct = request.headers.get("content-type", "")
    params = raw_ct.split(";", 1)[1] if ";" in raw_ct else ""
    params = ";".join(p for p in params.split(";") if not p.strip().lower().startswith("charset"))
    headers = Headers(raw=[(b"content-type", f"multipart/form-data;{params}; charset=latin-1".encode("latin-1"))])

    async def stream():
        yield body

    parser = MultiPartParser(headers, stream(), max_files=MAX_IMAGES, max_fields=MAX_FIELDS, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be read: {exc.message}") from None
    except Exception:  # noqa: BLE001 -- python-multipart's own errors on a malformed body
        raise ApiError(400, "bad_multipart", "the multipart body cannot be read: malformed") from None
    try:
        found = []
        for value in form.getlist("image"):
            if isinstance(value, UploadFile):
                name = (value.filename or "image").encode("latin-1", "replace").decode("utf-8", "replace")
                found.append((await value.read(), name))
            else:
                found.append((value.encode("latin-1", "replace"), "image"))
    finally:
        await form.close()
    if not found:
        # the parser takes a body that ends inside a part as one without that part: say what is wrong
        boundary = parse_options_header(headers["content-type"])[1].get(b"boundary", b"")
        if boundary and b"--" + boundary + b"--" not in body:
            raise ApiError(400, "bad_multipart", "the multipart body cannot be read: it ends before its closing "
                                                 "boundary")
        raise ApiError(400, "no_image_field", "a multipart upload needs the image in the field 'image'")
    if len(found) > MAX_IMAGES:
        raise ApiError(400, "too_many_images", f"{len(found)} images in one request: at most {MAX_IMAGES}")
    return found


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """The image of one upload as RGB, or the ApiError that tells the client why not."""
    if not data:
        raise ApiError(400, "empty_body", "the body is empty: send an image (multipart field 'image' or raw bytes)")
    try:
        return decode_image(data, max_pixels)
    except ImageError as exc:
        if exc.reason == TOO_LARGE:
            raise ApiError(413, "too_many_pixels", exc.describe().replace(" (--max-pixels)", "")) from None
        if exc.reason == TRUNCATED:
            raise ApiError(400, "truncated_image", "the image is truncated or corrupt") from None
        raise ApiError(415, "not_an_image", "the body is not an image (JPEG, PNG, BMP, WebP, GIF, TIFF)") from None
