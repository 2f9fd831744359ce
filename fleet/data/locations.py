"""Where data lives: an S3 URI (s3:// or the https forms the API allows) or file:// on
the controller. Pure parsing; no I/O."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from fleet.contract.job import S3_URI_FORMS
from fleet.errors import ClientError

# https://BUCKET.s3.REGION.amazonaws.com/KEY, https://BUCKET.s3.amazonaws.com/KEY,
# https://BUCKET.s3-REGION.amazonaws.com/KEY (virtual-hosted)
_VIRTUAL = re.compile(r"^(?P<bucket>.+)\.s3(?:[.-](?:dualstack\.)?[a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?$")
# https://s3.REGION.amazonaws.com/BUCKET/KEY, https://s3.amazonaws.com/BUCKET/KEY (path-style)
_PATH_STYLE = re.compile(r"^s3(?:[.-](?:dualstack\.)?[a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # a key or a key prefix; may be ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def child(self, relative: str) -> S3Location:
        """The object at `relative` under this prefix (joined with '/')."""
        base = self.key if not self.key or self.key.endswith("/") else self.key + "/"
        return S3Location(self.bucket, base + relative)


@dataclass(frozen=True)
class S3Object:
    """An object as a listing gives it."""

    location: S3Location
    size: int


@dataclass(frozen=True)
class FileLocation:
    """fleet's extension for on-prem data: a path on the controller."""

    path: str

    def __str__(self) -> str:
        return f"file://{self.path}"


Location = S3Location | FileLocation


def parse_location(uri: str) -> Location:
    """s3://bucket/key, https://bucket.s3.region.amazonaws.com/key,
    https://s3.region.amazonaws.com/bucket/key, or file:///absolute/path."""
    if uri.startswith("file://"):
        path = unquote(uri[len("file://"):])
        if not path.startswith("/"):
            raise ClientError(f"{uri}: a file:// URI needs an absolute path (file:///data/...)")
        return FileLocation(posixpath.normpath(path))
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://"):].partition("/")
        if not bucket:
            raise ClientError(f"{uri}: no bucket in the S3 URI")
        return S3Location(bucket, key)
    if uri.startswith("https://"):
        parts = urlsplit(uri)
        host = parts.hostname or ""
        path = unquote(parts.path.lstrip("/"))
        virtual = _VIRTUAL.match(host)
        if virtual:
            return S3Location(virtual.group("bucket"), path)
        if _PATH_STYLE.match(host):
            bucket, _, key = path.partition("/")
            if bucket:
                return S3Location(bucket, key)
        raise ClientError(f"{uri}: not an S3 URL fleet understands; an S3Uri is {S3_URI_FORMS}")
    raise ClientError(f"{uri}: an S3Uri must start with s3://, https:// or file://: {S3_URI_FORMS}")


def safe_relative_path(relative: str, what: str) -> str:
    """`relative` as a path inside a LocalPath; refused (ClientError naming `what`) if it
    could land outside: absolute, `..`, `.`, or empty components."""
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in relative:
        raise ClientError(f"{what} would land outside its LocalPath (relative path {relative!r}); refused")
    return relative


def relative_to_prefix(key: str, prefix: str) -> str:
    """Where an object listed under a prefix goes, as SageMaker places it: the part of its key
    after the prefix's last '/'. Prefix "data/in/": "data/in/a" → "a". Prefix "data/in" (ending
    mid-name): "data/input.csv" → "input.csv", "data/in/a" → "in/a". A prefix naming one
    object places it under its own name; "data/in//a" keeps its empty component (refused)."""
    return key[prefix.rfind("/") + 1:]
