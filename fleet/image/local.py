"""The controller's own Docker engine, as a source of images to push to hosts.

`inspect_local` asks the `docker` CLI on PATH (so DOCKER_HOST and the current context
apply, as for the user's own `docker` commands) what it knows of an image: its ID, its
layers (RootFS diff IDs, in order: what `docker load` on a host may already have), its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
from dataclasses import dataclass

from fleet.fanout import all_of

log = logging.getLogger(__name__)

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_OUTPUT_LIMIT = 4 * 1024 * 1024  # an inspect's JSON: an image of thousands of tags stays under


@dataclass(frozen=True)
class LocalImage:
    """An image as Docker describes it (`docker image inspect`)."""

    id: str  # "sha256:...", the digest of its config (of a manifest where not config_known)
    layers: tuple[str, ...]  # RootFS diff IDs, base first
    size: int  # bytes, uncompressed
    tags: tuple[str, ...]  # "repo:tag"
    # False on Docker's containerd image store: its IDs are the digests of manifests, and no
    # inspect tells the config's (a `docker save` of the image does).
    config_known: bool = True


def parse_inspect(output: bytes) -> LocalImage | None:
    """The image of `docker image inspect`'s JSON (a list of one), or None if it is not one
    (IDs that are no sha256 digests, fields missing)."""
    try:
        found = json.loads(output)
        item = found[0]
        image = LocalImage(
            id=item["Id"], layers=tuple(item["RootFS"].get("Layers") or ()), size=int(item.get("Size") or 0),
            tags=tuple(item.get("RepoTags") or ()), config_known=not isinstance(item.get("Descriptor"), dict))
    except (ValueError, LookupError, TypeError, AttributeError):
        return None
    if not all(isinstance(x, str) and DIGEST.match(x) for x in (image.id, *image.layers)):
        return None
    if not all(isinstance(tag, str) for tag in image.tags):
        return None
    return image


async def inspect_local(reference: str, *, timeout: float) -> LocalImage | None:
    """`docker image inspect REFERENCE` on this machine. None when docker is missing, does
    not answer within `timeout` seconds, or has no such image (the reason logged at debug)."""
    docker = shutil.which("docker")
    if docker is None:
        log.debug("no docker command on PATH: the controller has no images to push")
        return None
    try:
        process = await asyncio.create_subprocess_exec(
            docker, "image", "inspect", "--", reference, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        log.debug("cannot run %s: %s", docker, exc)
        return None
    try:
        async with asyncio.timeout(timeout):
            out, err = await all_of(_read(process.stdout), _read(process.stderr))
            status = await process.wait()
    except TimeoutError:
        log.debug("the controller's docker did not answer within %.0f s", timeout)
        return None
    finally:
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
    if status != 0:
        log.debug("the controller's docker has no image %s: %s", reference,
                  err.decode(errors="replace").strip()[-500:])
        return None
    image = parse_inspect(out)
    if image is None:
        log.debug("the controller's docker described %s in a way fleet does not read", reference)
    return image


async def _read(stream: asyncio.StreamReader | None) -> bytes:
    """A stream to its end, keeping its first _OUTPUT_LIMIT bytes."""
    kept = bytearray()
    assert stream is not None
    while chunk := await stream.read(65536):
        if len(kept) < _OUTPUT_LIMIT:
            kept += chunk[:_OUTPUT_LIMIT - len(kept)]
    return bytes(kept)
