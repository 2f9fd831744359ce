"""An image reference (the job's ImageUri), as Docker reads it. Pure.

    [REGISTRY/]REPOSITORY[:TAG][@DIGEST]

REGISTRY is the first path component when it has a `.` or a `:` or is `localhost`; else the
image is on Docker Hub (`docker.io`, `library/` for one-word names). No tag and no digest
means `:latest`, as for `docker pull`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleet.errors import InvalidInput

DOCKER_HUB = "docker.io"
HUB_API = "registry-1.docker.io"  # where Docker Hub's registry API answers
HUB_AUTH_KEY = "https://index.docker.io/v1/"  # Docker Hub's key in a Docker config's `auths`

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(r"^(?:[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]{1,5})?$")
# ACCOUNT.dkr.ecr[-fips].REGION.amazonaws.com[.cn]: an ECR private registry
_ECR = re.compile(r"^(?P<account>[0-9]{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


@dataclass(frozen=True)
class Reference:
    registry: str  # "docker.io", "10.0.0.5:5000", "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    repository: str  # "library/busybox", "team/proc"
    tag: str | None  # None when only a digest is given
    digest: str | None  # "sha256:..."

    @property
    def name(self) -> str:
        """REGISTRY/REPOSITORY as Docker prints it (Docker Hub's without `docker.io/`)."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return f"{self.registry}/{self.repository}"

    def pinned(self, digest: str) -> str:
        """The reference to pull for exactly `digest` (a manifest's): NAME@DIGEST."""
        return f"{self.name}@{digest}"

    @property
    def api_host(self) -> str:
        """Where the registry's HTTP API answers (host[:port])."""
        return HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def auth_key(self) -> str:
        """The registry's key in a Docker config's `auths` (what `docker login` writes)."""
        return HUB_AUTH_KEY if self.registry == DOCKER_HUB else self.registry

    @property
    def ecr(self) -> tuple[str, str] | None:
        """(account, region) for an image in an ECR private registry, else None."""
        match = _ECR.match(self.registry)
        return (match["account"], match["region"]) if match else None

    @property
    def loopback(self) -> bool:
        return loopback(self.registry)

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def host_of(authority: str) -> str:
    """HOST of HOST[:PORT] (an IPv6 address keeps its brackets)."""
    return authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority


def loopback(authority: str) -> bool:
    """Whether HOST[:PORT] names this machine, by name or address (never resolved)."""
    host = host_of(authority).lower()
    return host in ("localhost", "[::1]") or host.startswith("127.")


def plain_http_allowed(authority: str, insecure: frozenset[str]) -> bool:
    """Whether HOST[:PORT] may be spoken to over plain HTTP: on loopback, or listed (with or
    without the port) in the inventory's `insecure_registries`, as dockerd's option of that
    name. By name, as dockerd does: nothing is resolved."""
    listed = {entry.lower() for entry in insecure}
    return loopback(authority) or authority.lower() in listed or host_of(authority).lower() in listed


def parse_reference(uri: str) -> Reference:
    """The job's ImageUri as Docker reads it; InvalidInput naming the part that is wrong."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"AppSpecification.ImageUri {uri!r}: {why}")

    rest, digest = uri, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise bad(f"the digest {digest!r} is not sha256: and 64 hex digits")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, remainder
        if not _REGISTRY.match(registry):
            raise bad(f"the registry {registry!r} is not a host name with an optional port")
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    if ":" in path:
        path, tag = path.rsplit(":", 1)
        if not _TAG.match(tag):
            raise bad(f"the tag {tag!r} is not valid (letters, digits, _ . -; at most 128)")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.match(path):
        raise bad(f"the repository {path!r} is not valid (lowercase letters, digits, separators . _ -)")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)
