"""A tag resolved to its manifest digest, once, on the controller: the Registry HTTP API v2
(`HEAD /v2/REPOSITORY/manifests/TAG`, the `Docker-Content-Digest` answered), with the
registry's own auth (HTTP Basic, or a Bearer token from the realm its challenge names).

Every host then pulls NAME@DIGEST: a tag moved while the job starts does not split it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from fleet.errors import ClientError
from fleet.image.credentials import RegistryAuth
from fleet.image.reference import Reference, plain_http_allowed

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

TIMEOUT = 30  # seconds for the whole resolution
CONNECT_TIMEOUT = 10
MANIFEST_LIMIT = 4 * 2**20  # bytes of a manifest read when the registry names no digest
TOKEN_LIMIT = 2**20
ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


class Unreachable(Exception):
    """The controller cannot reach the registry (or may not ask it without credentials):
    the hosts pull on their own, and their images are compared before anything starts."""


@dataclass(frozen=True)
class Resolved:
    digest: str  # the manifest's (a multi-platform index's, for such images)


def base_url(reference: Reference, auth: RegistryAuth, insecure: frozenset[str]) -> str:
    """Where the registry's API answers: ECR's proxyEndpoint; plain HTTP for a registry on
    loopback or listed in the inventory's `insecure_registries` (as dockerd's option of
    that name), HTTPS otherwise."""
    if auth.endpoint:
        return auth.endpoint
    host = reference.api_host
    return f"{'http' if plain_http_allowed(host, insecure) else 'https'}://{host}"


async def resolve(reference: Reference, auth: RegistryAuth, insecure: frozenset[str] = frozenset()) -> Resolved:
    """The digest of the image's manifest now. ClientError for what the registry refuses
    (no such image, credentials refused) and for a token realm that would get the
    credentials over plain HTTP (see `_authorization`); Unreachable when it cannot be asked."""
    if reference.digest:
        return Resolved(reference.digest)
    # aiohttp (~0.1 s to import) only for a job whose hosts must pull: a plain `fleet run`
    # of an image the hosts have never asks a registry.
    import aiohttp

    base = base_url(reference, auth, insecure)
    url = f"{base}/v2/{reference.repository}/manifests/{reference.tag}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT,
                                                                     sock_connect=CONNECT_TIMEOUT)) as http:
            return await _resolve(http, url, reference, auth, insecure)
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Unreachable(f"{base}: {type(exc).__name__}: {exc}") from None


async def _resolve(http: aiohttp.ClientSession, url: str, reference: Reference, auth: RegistryAuth,
                   insecure: frozenset[str]) -> Resolved:
    headers = {"Accept": ACCEPT}
    async with http.head(url, headers=headers, allow_redirects=True) as response:
        status, challenge = response.status, response.headers.get("WWW-Authenticate", "")
        digest = response.headers.get("Docker-Content-Digest")
    if status == 401:
        headers["Authorization"] = await _authorization(http, challenge, reference, auth, insecure)
        async with http.head(url, headers=headers, allow_redirects=True) as response:
            status, digest = response.status, response.headers.get("Docker-Content-Digest")
    if status == 200 and not digest:  # some registries name it on GET only: hash the manifest
        async with http.get(url, headers=headers, allow_redirects=True) as response:
            body = await response.content.read(MANIFEST_LIMIT)
            status = response.status
            digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()
    if status == 200 and digest and re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        log.debug("%s is %s", reference, digest)
        return Resolved(digest)
    if status in (401, 403):
        if auth.anonymous:
            raise Unreachable(f"{reference.registry} asks for credentials and the controller has none")
        raise ClientError(f"the registry {reference.registry} refused the credentials ({auth.source}) "
                          f"for image {reference} (HTTP {status})")
    if status == 404:
        raise ClientError(f"image {reference} not found in the registry {reference.registry} (HTTP 404)")
    if status == 200:
        raise ClientError(f"the registry {reference.registry} named no valid digest for image {reference}")
    raise Unreachable(f"{reference.registry} answered HTTP {status}")


async def _authorization(http: aiohttp.ClientSession, challenge: str, reference: Reference,
                         auth: RegistryAuth, insecure: frozenset[str]) -> str:
    """The Authorization header for the registry's API, from its challenge. A Bearer realm
    is whatever the registry (or anyone between) names: credentials go to it only over
    HTTPS, or over plain HTTP to loopback or to a host in `insecure_registries` (the rule
    the registry's own API follows); any other plain-HTTP realm is refused with a
    ClientError naming it. An anonymous token request carries nothing secret and goes."""
    scheme = challenge.split(" ", 1)[0].lower()
    basic = auth.basic()
    if scheme == "basic":
        if basic is None:
            raise Unreachable(f"{reference.registry} asks for credentials and the controller has none")
        return basic
    if scheme != "bearer":
        raise Unreachable(f"{reference.registry} asks for an authentication fleet does not speak: {scheme}")
    params = dict(_CHALLENGE.findall(challenge))
    realm = params.pop("realm", "")
    if not realm.startswith(("https://", "http://")):
        raise Unreachable(f"{reference.registry}: no token realm in its challenge")
    params.setdefault("scope", f"repository:{reference.repository}:pull")
    parts = urlsplit(realm)
    if (not auth.anonymous and parts.scheme == "http"
            and not plain_http_allowed(parts.netloc.rpartition("@")[2], insecure)):
        raise ClientError(f"the registry {reference.registry} asks for the credentials ({auth.source}) to be sent "
                          f"to the token service {realm} over plain HTTP; fleet sends them only over HTTPS, or over "
                          f"HTTP to loopback or to a registry listed in the inventory's insecure_registries")
    headers = {"Authorization": basic} if basic else {}
    if auth.identity_token:  # an OAuth refresh token (docker login to some registries)
        # No redirects: a 307/308 would re-send the token in the body to wherever it points.
        # (aiohttp drops the Authorization header of the GET below on a cross-origin redirect.)
        form = {"grant_type": "refresh_token", "refresh_token": auth.identity_token,
                "service": params.get("service", ""), "scope": params["scope"], "client_id": "fleet"}
        async with http.post(realm, data=form, allow_redirects=False) as response:
            answer = await _json(response, reference)
    else:
        async with http.get(realm, params=params, headers=headers) as response:
            answer = await _json(response, reference)
    token = answer.get("token") or answer.get("access_token")
    if not isinstance(token, str) or not token:
        raise ClientError(f"the registry {reference.registry}'s token service gave no token")
    return f"Bearer {token}"


async def _json(response: aiohttp.ClientResponse, reference: Reference) -> dict:
    body = await response.content.read(TOKEN_LIMIT)
    if response.status in (401, 403):
        raise ClientError(f"the registry {reference.registry}'s token service refused the credentials "
                          f"for image {reference} (HTTP {response.status})")
    if response.status != 200:
        raise Unreachable(f"{reference.registry}'s token service answered HTTP {response.status}")
    try:
        answer = json.loads(body)
    except ValueError:
        raise Unreachable(f"{reference.registry}'s token service answered no JSON") from None
    return answer if isinstance(answer, dict) else {}
