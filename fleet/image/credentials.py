"""Registry credentials, found on the controller and lent to a host for one pull.

- ECR (`ACCOUNT.dkr.ecr.REGION.amazonaws.com[.cn]`): an authorization token from ECR's
  GetAuthorizationToken for that account, through aiobotocore and the standard AWS chain
  (`AWS_ENDPOINT_URL_ECR` honoured); a token that has expired already is refused.
- Any other registry: the controller's Docker config (`$DOCKER_CONFIG/config.json`, else
  `~/.docker/config.json`): `credHelpers` for the registry, else `credsStore`, through
  `docker-credential-NAME get`; else `auths` (what `docker login` wrote).
- None of these: the pull goes without credentials (the host's own Docker config applies).

The host gets them as a Docker config of its own for the pull (`RegistryAuth.docker_config`,
sent on the session's stdin): never an argv, a log, a record or a message. `repr` hides the
secret parts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fleet.errors import ClientError
from fleet.image.reference import HUB_AUTH_KEY, Reference

log = logging.getLogger(__name__)

HELPER_TIMEOUT = 30.0  # seconds a docker-credential-NAME may take
HELPER_OUTPUT_LIMIT = 65536  # bytes of its answer read
CONFIG_LIMIT = 4 * 2**20  # bytes of a Docker config read


@dataclass(frozen=True)
class RegistryAuth:
    source: str  # how fleet check and the notices name it: "ECR", "docker config", "none"
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    endpoint: str | None = None  # ECR's proxyEndpoint: where the registry's API answers
    expires: datetime | None = None

    @property
    def anonymous(self) -> bool:
        return not (self.password or self.identity_token)

    def docker_config(self, reference: Reference) -> bytes:
        """A Docker client config holding these credentials for the image's registry (what
        the host's `docker --config DIR pull` reads); empty when anonymous."""
        if self.anonymous:
            return b""
        if self.identity_token:
            entry = {"auth": _b64(f"{self.username or '<token>'}:"), "identitytoken": self.identity_token}
        else:
            entry = {"auth": _b64(f"{self.username}:{self.password}")}
        return json.dumps({"auths": {reference.auth_key: entry}}).encode()

    def basic(self) -> str | None:
        """The HTTP Basic credentials (for the registry's API), or None."""
        if self.anonymous or self.identity_token:
            return None
        return "Basic " + _b64(f"{self.username}:{self.password}")


NO_AUTH = RegistryAuth("none")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def credentials_for(reference: Reference) -> RegistryAuth:
    """The credentials the controller has for the image's registry (see the module)."""
    if reference.ecr is not None:
        return await ecr_token(reference)
    return await docker_config_auth(reference)


# -- ECR ------------------------------------------------------------------------------------
async def ecr_token(reference: Reference) -> RegistryAuth:
    from aiobotocore.session import get_session  # only jobs on ECR images need it
    from botocore.exceptions import BotoCoreError, ClientError as BotoClientError

    assert reference.ecr is not None
    account, region = reference.ecr
    what = f"ECR GetAuthorizationToken for {reference.registry} (image {reference})"
    try:
        async with get_session().create_client("ecr", region_name=region) as ecr:
            answer = await ecr.get_authorization_token(registryIds=[account])
    except BotoClientError as exc:
        error = exc.response.get("Error", {})
        raise ClientError(f"{what}: {error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")) from None
    except BotoCoreError as exc:
        raise ClientError(f"{what}: {exc}") from None
    data = (answer.get("authorizationData") or [{}])[0]
    try:
        user, _, password = base64.b64decode(data["authorizationToken"], validate=True).decode().partition(":")
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ClientError(f"{what}: the answer holds no authorization token") from None
    if not password:
        raise ClientError(f"{what}: the answer holds no authorization token")
    expires = data.get("expiresAt")
    if isinstance(expires, (int, float)):
        expires = datetime.fromtimestamp(expires, UTC)
    if isinstance(expires, datetime):
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
        if expires <= datetime.now(UTC):
            raise ClientError(f"{what}: ECR returned a token that expired at {expires.isoformat()}")
    else:
        expires = None
    endpoint = data.get("proxyEndpoint") or f"https://{reference.registry}"
    log.debug("ECR token for %s, expiring %s", reference.registry, expires)
    return RegistryAuth("ECR", user or "AWS", password, endpoint=str(endpoint).rstrip("/"), expires=expires)


# -- the Docker config ----------------------------------------------------------------------
def docker_config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) / "config.json" if directory else Path.home() / ".docker" / "config.json"


def _normalized(key: str) -> str:
    """An `auths` key as a registry host[:port] ("https://host:5000/v1/" → "host:5000")."""
    if key in (HUB_AUTH_KEY, "https://index.docker.io/v1", "index.docker.io", "docker.io",
               "registry-1.docker.io"):
        return HUB_AUTH_KEY
    for scheme in ("https://", "http://"):
        key = key.removeprefix(scheme)
    return key.split("/", 1)[0]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(CONFIG_LIMIT + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientError(f"cannot read the Docker config {path}: {exc.strerror}") from None
    if len(raw) > CONFIG_LIMIT:
        raise ClientError(f"the Docker config {path} is larger than {CONFIG_LIMIT} bytes")
    try:
        config = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ClientError(f"the Docker config {path} is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ClientError(f"the Docker config {path} is not a JSON object")
    return config


async def docker_config_auth(reference: Reference, path: Path | None = None) -> RegistryAuth:
    path = path or docker_config_path()
    config = _read_config(path)
    key = reference.auth_key
    helpers = config.get("credHelpers") or {}
    helper = next((name for k, name in helpers.items() if isinstance(k, str) and _normalized(k) == key), None) \
        if isinstance(helpers, dict) else None
    helper = helper or config.get("credsStore")
    if isinstance(helper, str) and helper:
        found = await _from_helper(helper, key, path)
        if found is not None:
            return found
    auths = config.get("auths") or {}
    if not isinstance(auths, dict):
        raise ClientError(f"the Docker config {path}: `auths` is not an object")
    entry = next((value for k, value in auths.items() if isinstance(k, str) and _normalized(k) == key), None)
    if not isinstance(entry, dict):
        return NO_AUTH
    username, password = entry.get("username") or "", entry.get("password") or ""
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (TypeError, ValueError, binascii.Error):
            raise ClientError(f"the Docker config {path}: auths.{key}.auth is not base64 of USER:PASSWORD") from None
    token = entry.get("identitytoken") or ""
    if not (password or token):
        return NO_AUTH
    return RegistryAuth("docker config", str(username), str(password), str(token))


async def _from_helper(helper: str, key: str, path: Path) -> RegistryAuth | None:
    """`docker-credential-HELPER get` for the registry; None when it has nothing for it."""
    program = f"docker-credential-{helper}"
    try:
        process = await asyncio.create_subprocess_exec(
            program, "get", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise ClientError(f"the Docker config {path} names the credential helper {helper!r}, "
                          f"but {program} cannot run: {exc.strerror}") from None
    try:
        async with asyncio.timeout(HELPER_TIMEOUT):
            out, err = await process.communicate(key.encode())
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ClientError(f"{program} get did not answer within {HELPER_TIMEOUT:g} s") from None
    out, err = out[:HELPER_OUTPUT_LIMIT], err[:1024]
    if process.returncode != 0:
        said = (out or err).decode(errors="replace").strip()
        if "not found" in said.lower():
            return None
        raise ClientError(f"{program} get failed for {key} (status {process.returncode}): {said[:300]}")
    try:
        answer = json.loads(out)
        username, secret = str(answer.get("Username") or ""), str(answer.get("Secret") or "")
    except (ValueError, AttributeError):
        raise ClientError(f"{program} get answered no JSON credentials for {key}") from None
    if not secret:
        return None
    if username == "<token>":
        return RegistryAuth(f"docker config ({helper})", identity_token=secret)
    return RegistryAuth(f"docker config ({helper})", username, secret)
