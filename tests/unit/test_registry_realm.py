"""The registry's token realm gets the controller's credentials only over HTTPS, or over
plain HTTP to loopback or to a registry the inventory lists in `insecure_registries`
(issue 19, point 13): a registry, or anyone between, answering
`WWW-Authenticate: Bearer realm="http://..."` must not get Basic credentials or an
identity token in clear.

A fake registry on 127.0.0.1 answers 401 with a realm on a second local HTTP server. The
realm is named `realm.example` (resolved to 127.0.0.1 by a patched resolver), so the check,
which goes by name as `insecure_registries` does, sees a plain-HTTP host that is neither
loopback nor listed."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from fleet.errors import ClientError
from fleet.image.credentials import RegistryAuth
from fleet.image.reference import parse_reference
from fleet.image.registry import resolve as real_resolve  # conftest replaces registry.resolve

DIGEST = "sha256:" + "ab" * 32
PASSWORD = "zq-secret-password"
IDENTITY_TOKEN = "zq-identity-refresh-token"
BASIC = RegistryAuth("docker config", "zq-user", PASSWORD)
TOKEN_LOGIN = RegistryAuth("docker config", "<token>", identity_token=IDENTITY_TOKEN)


@dataclass
class Seen:
    realm: str = ""  # the realm the registry's challenge names
    requests: list[str] = field(default_factory=list)  # everything the realm server got

    def leaked(self) -> bool:
        return any(PASSWORD in r or IDENTITY_TOKEN in r or "Basic " in r for r in self.requests)


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


@pytest.fixture
async def registry_with_realm(monkeypatch) -> AsyncIterator[tuple[str, int, Seen]]:
    """(registry host:port, realm port, what the realm saw). The registry's challenge names
    `seen.realm`: http://realm.example:PORT/token unless the test changes it."""
    seen = Seen()

    async def token(request: web.Request) -> web.Response:
        body = await request.text()
        if request.path == "/hop":  # a loopback realm that sends the request on elsewhere
            raise web.HTTPTemporaryRedirect(f"http://realm.example:{request.url.port}/token")
        seen.requests.append(f"{request.method} {request.rel_url}\n{dict(request.headers)}\n{body}")
        return web.json_response({"token": "registry-token"})

    realm_runner, realm_port = await _serve(_app(token))
    seen.realm = f"http://realm.example:{realm_port}/token"

    async def manifest(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer registry-token":
            return web.Response(status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{seen.realm}",service="reg",scope="repository:team/a:pull"'})
        return web.Response(headers={"Docker-Content-Digest": DIGEST})

    registry_runner, registry_port = await _serve(_app(manifest))
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # realm.example is this machine, by name only
        return real_getaddrinfo("127.0.0.1" if host == "realm.example" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield f"127.0.0.1:{registry_port}", realm_port, seen
    finally:
        await registry_runner.cleanup()
        await realm_runner.cleanup()


def _app(handler) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.mark.parametrize("auth", [BASIC, TOKEN_LOGIN], ids=["basic", "identity-token"])
async def test_credentials_never_go_to_a_plain_http_realm_that_is_neither_loopback_nor_listed(
        registry_with_realm, auth):
    registry, realm_port, seen = registry_with_realm
    with pytest.raises(ClientError) as refused:
        await real_resolve(parse_reference(f"{registry}/team/a:1"), auth)
    assert registry in refused.value.message
    assert f"http://realm.example:{realm_port}/token" in refused.value.message
    assert not seen.leaked(), seen.requests
    assert seen.requests == []


async def test_an_anonymous_pull_may_ask_a_plain_http_realm_for_a_token(registry_with_realm):
    registry, _, seen = registry_with_realm
    resolved = await real_resolve(parse_reference(f"{registry}/team/a:1"), RegistryAuth("none"))
    assert resolved.digest == DIGEST
    assert len(seen.requests) == 1 and not seen.leaked()


@pytest.mark.parametrize("auth", [BASIC, TOKEN_LOGIN], ids=["basic", "identity-token"])
async def test_a_plain_http_realm_listed_in_insecure_registries_gets_the_credentials(registry_with_realm, auth):
    registry, realm_port, seen = registry_with_realm
    for listed in ("realm.example", f"realm.example:{realm_port}"):
        seen.requests.clear()
        resolved = await real_resolve(parse_reference(f"{registry}/team/a:1"), auth, frozenset({listed}))
        assert resolved.digest == DIGEST
        assert seen.leaked(), "the listed realm got the credentials it asked for"


@pytest.mark.parametrize("auth", [BASIC, TOKEN_LOGIN], ids=["basic", "identity-token"])
async def test_a_plain_http_realm_on_loopback_gets_the_credentials(registry_with_realm, auth):
    registry, realm_port, seen = registry_with_realm
    seen.realm = f"http://127.0.0.1:{realm_port}/token"
    resolved = await real_resolve(parse_reference(f"{registry}/team/a:1"), auth)
    assert resolved.digest == DIGEST
    assert seen.leaked(), "the loopback realm got the credentials it asked for"


@pytest.mark.parametrize("auth", [BASIC, TOKEN_LOGIN], ids=["basic", "identity-token"])
async def test_a_realm_that_redirects_to_a_plain_http_host_does_not_pass_the_credentials_on(
        registry_with_realm, auth):
    registry, realm_port, seen = registry_with_realm
    seen.realm = f"http://127.0.0.1:{realm_port}/hop"
    try:  # ends resolved anonymously (Basic) or refused (the token's POST is not redirected)
        await real_resolve(parse_reference(f"{registry}/team/a:1"), auth)
    except ClientError:
        pass
    except Exception as exc:  # Unreachable: the hosts pull on their own
        assert type(exc).__name__ == "Unreachable", exc
    assert not seen.leaked(), seen.requests
