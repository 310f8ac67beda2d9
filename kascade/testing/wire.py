"""Bodies in and out: decoding a request's body, answering with JSON (and `Warning` headers), rendering objects."""

from __future__ import annotations

import json
from typing import Any

import aiohttp.web
import yaml

from kascade.testing import errors, tables
from kascade.testing.errors import ApiError
from kascade.testing.kinds import Kind

# PATCH media types and the patch semantics each asks for.
PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
    "application/apply-patch+cbor": "apply",
}


def media_type(content_type: str) -> str:
    """`application/json; charset=utf-8` -> `application/json`."""
    return content_type.split(";")[0].strip().lower()


def parse_body(body: bytes, content_type: str) -> Any:
    """JSON or YAML by the Content-Type; protobuf and CBOR are 415, as kubectl's imperative commands find out."""
    media = media_type(content_type)
    if "protobuf" in media or "cbor" in media:
        raise errors.unsupported_media_type(media, ["application/json", "application/yaml"])
    try:
        if "yaml" in media:
            return yaml.safe_load(body.decode())
        return json.loads(body.decode()) if body else None
    except (ValueError, yaml.YAMLError) as error:
        raise errors.bad_request(f"couldn't decode the body: {error}") from None


def bool_param(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def json_response(body: Any, status: int = 200, warnings: list[str] | None = None) -> aiohttp.web.Response:
    response = aiohttp.web.Response(text=json.dumps(body), status=status, content_type="application/json")
    for warning in warnings or []:
        escaped = warning.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.add("Warning", f'299 - "{escaped}"')
    return response


def error_response(error: ApiError) -> aiohttp.web.Response:
    return json_response(error.status(), error.code, error.warnings)


def render(kind: Kind, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as served at the requested version (one storage for all versions, no conversion)."""
    if obj.get("apiVersion") == kind.api_version:
        return obj
    return {**obj, "apiVersion": kind.api_version}


def render_one(kind: Kind, obj: dict[str, Any], as_table: bool, accept: str, include_object: str) -> dict[str, Any]:
    """One object as the Accept header asks: itself, a server-side Table, or PartialObjectMetadata."""
    if as_table:
        return tables.table(
            kind,
            [render(kind, obj)],
            resource_version=obj["metadata"]["resourceVersion"],
            include_object=include_object,
        )
    if "as=PartialObjectMetadata" in accept:
        return tables.partial_metadata(obj)
    return render(kind, obj)
