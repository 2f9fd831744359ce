"""The engine's API (Docker's, and Podman's Docker-compatible one) over any byte stream.

`Engine.open` asks `GET /_ping` (and `GET /version` of a server newer than fleet) once and
speaks min(the server's ApiVersion, API_VERSION), never below the server's MinAPIVersion
(Docker 29 refuses anything below 1.44; Docker 20.10 speaks 1.41; Podman's compat API says
1.41 with a minimum of 1.24). Every call is bounded in
time (`timeout`, asyncio.timeout around the whole exchange) and in memory (a JSON answer at
most JSON_LIMIT bytes, an error's text ERROR_LIMIT; logs are streamed frame piece by
piece, fleet.engine.frames). Errors name the host and keep the engine's own message:

    404 no such image / container   NoSuchObject (a ClientError)
    409 conflict (a name in use)    Conflict (a ClientError)
    other 4xx (a bad parameter)     EngineRefused (a ClientError: running again fails again)
    5xx, no answer in time, a cut   EngineFailed (a HostError: the machinery's, exit 75)
    or broken connection
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from fleet.engine.frames import FrameError, LogFrames
from fleet.engine.http import Connection, Connector, EngineProtocolError, Response
from fleet.errors import ClientError, FleetError, HostError

log = logging.getLogger(__name__)

API_VERSION = (1, 47)  # the newest this client is written against (Docker 27)
OLDEST_API = (1, 24)  # older engines lack what fleet asks for (Docker 1.12)
JSON_LIMIT = 4 * 2**20  # bytes of an inspect / version / list answer
ERROR_LIMIT = 65536  # bytes of an error answer read (its message is cut to MESSAGE_LIMIT)
MESSAGE_LIMIT = 4096
IMAGES_LIMIT = 4096  # images of a host looked at for the layers it has (fleet-image-have's)
IDLE_LIMIT = 2  # idle connections kept for the next call


class EngineRefused(ClientError):
    """The engine refused the request (4xx): running it again would fail again."""

    def __init__(self, host: str, status: int, message: str) -> None:
        super().__init__(f"{host}: {message}")
        self.host = host
        self.status = status


class NoSuchObject(EngineRefused):
    """404: no such image or container."""


class Conflict(EngineRefused):
    """409: e.g. a container of that name exists, or is running."""


class EngineFailed(HostError):
    """The engine failed (5xx), did not answer in time, or the connection to it broke."""

    def __init__(self, host: str, message: str, status: int | None = None, *, timed_out: bool = False) -> None:
        super().__init__(host, message)
        self.status = status
        self.timed_out = timed_out  # the engine did not answer in time (hung, or down behind its socket)


@dataclass(frozen=True)
class ServerVersion:
    version: str  # the engine's own version ("20.10.24", "5.8.0")
    api: tuple[int, int]  # what fleet speaks with it (negotiated)
    podman: bool  # Podman's Docker-compatible service

    @property
    def api_text(self) -> str:
        return f"{self.api[0]}.{self.api[1]}"


def _parse_api(text: object) -> tuple[int, int] | None:
    try:
        major, minor = str(text).split(".", 1)
        return int(major), int(minor)
    except ValueError:
        return None


def negotiate(answer: dict[str, Any]) -> tuple[int, int]:
    """The API version to speak with a server whose GET /version said `answer` (ValueError
    if it speaks nothing fleet knows)."""
    server = _parse_api(answer.get("ApiVersion"))
    if server is None:
        raise ValueError(f"no ApiVersion in its version ({str(answer.get('ApiVersion'))[:40]!r})")
    lowest = _parse_api(answer.get("MinAPIVersion")) or OLDEST_API
    chosen = max(min(server, API_VERSION), lowest)
    if chosen < OLDEST_API or chosen > server:
        raise ValueError(f"it speaks API {server[0]}.{server[1]} (at least {lowest[0]}.{lowest[1]}), "
                         f"fleet {OLDEST_API[0]}.{OLDEST_API[1]} to {API_VERSION[0]}.{API_VERSION[1]}")
    return chosen


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="/:@")


class EngineHTTP:
    """The HTTP under an Engine: each call one exchange on a connection of its own (an idle
    one if there is, at most IDLE_LIMIT kept, else a new one from the connector), bounded in
    time and in size, its status mapped to the module's errors; and the log's stream."""

    def __init__(self, connector: Connector, label: str, *, timeout: float, path: str) -> None:
        self._connector = connector
        self.label = label
        self.timeout = timeout
        self.path = path  # how it is reached, for `fleet check` ("socket /var/run/docker.sock", ...)
        self.server: ServerVersion | None = None
        self._idle: list[Connection] = []

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()

    # -- the exchange --------------------------------------------------------------------------
    def _target(self, path: str, query: dict[str, str] | None, versioned: bool) -> str:
        if versioned and self.server is not None:
            path = f"/v{self.server.api_text}{path}"
        return path + ("?" + urllib.parse.urlencode(query) if query else "")

    async def _connection(self) -> Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable:
                return connection
            connection.close()
        try:
            return Connection(await self._connector())
        except FleetError:
            raise
        except OSError as exc:
            raise EngineFailed(self.label, f"cannot reach the engine ({self.path}): {exc.strerror or exc}") from exc

    def _release(self, connection: Connection) -> None:
        if connection.reusable and len(self._idle) < IDLE_LIMIT:
            self._idle.append(connection)
        else:
            connection.close()

    async def _send(self, connection: Connection, method: str, target: str, body: bytes | None) -> Response:
        return await connection.request(method, target, body)

    async def _exchange(self, method: str, path: str, doing: str, *, query: dict[str, str] | None = None,
                        body: Any = None, limit: int = JSON_LIMIT, versioned: bool = True,
                        timeout: float | None = None) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) of one call; errors as the module says (any status is
        returned: the caller maps it)."""
        data = json.dumps(body).encode() if body is not None else None
        target = self._target(path, query, versioned)
        wait = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                for attempt in (1, 2):
                    connection = await self._connection()
                    reused = connection.used
                    try:
                        response = await self._send(connection, method, target, data)
                    except (OSError, EngineProtocolError, HostError) as exc:
                        connection.close()
                        # An idle connection the engine (or sshd) closed meanwhile: once more
                        # on a new one, as nothing was answered.
                        if attempt == 1 and reused:
                            log.debug("%s: an idle engine connection failed (%s); a new one", self.label, exc)
                            continue
                        raise
                    try:
                        answer = await response.read(limit if response.status < 400 else ERROR_LIMIT)
                    except BaseException:
                        connection.close()
                        raise
                    self._release(connection)
                    return response.status, answer, response.headers
        except TimeoutError:
            raise EngineFailed(self.label, f"docker did not answer within {wait:g} s ({doing})",
                               timed_out=True) from None
        except EngineProtocolError as exc:
            raise EngineFailed(self.label, f"the engine's answer is broken ({doing}): {exc}") from None
        except OSError as exc:
            raise EngineFailed(self.label, f"lost the engine connection ({doing}): {exc.strerror or exc}") from exc
        except HostError as exc:
            raise EngineFailed(self.label, f"lost the engine connection ({doing}): "
                                           f"{exc.message.removeprefix(self.label + ': ')}") from exc
        raise AssertionError("unreachable")

    def _error(self, status: int, answer: bytes, doing: str) -> FleetError:
        try:
            message = str(json.loads(answer).get("message", ""))
        except (ValueError, AttributeError):
            message = answer.decode(errors="replace")
        message = message.strip()[:MESSAGE_LIMIT] or f"HTTP {status}"
        if status == 404:
            return NoSuchObject(self.label, status, f"{doing}: {message}")
        if status == 409:
            return Conflict(self.label, status, f"{doing}: {message}")
        if 400 <= status < 500:
            return EngineRefused(self.label, status, f"{doing}: docker refused: {message}")
        return EngineFailed(self.label, f"docker failed ({doing}): {message}", status)

    async def _json(self, method: str, path: str, doing: str, **kwargs: Any) -> Any:
        status, answer, _ = await self._exchange(method, path, doing, **kwargs)
        if status >= 400:
            raise self._error(status, answer, doing)
        if not answer:
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise EngineFailed(self.label, f"the engine's answer is not JSON ({doing})") from None

    async def _object(self, method: str, path: str, doing: str, **kwargs: Any) -> dict[str, Any]:
        """A call whose answer is a JSON object (an empty answer: an empty one); any other JSON
        is a broken answer, never a TypeError (`dict()` of a list or a string)."""
        found = await self._json(method, path, doing, **kwargs)
        if found is None:
            return {}
        if not isinstance(found, dict):
            raise EngineFailed(self.label, f"the engine's answer is not a JSON object ({doing})")
        return found

    async def _empty(self, method: str, path: str, doing: str, **kwargs: Any) -> None:
        status, answer, _ = await self._exchange(method, path, doing, limit=ERROR_LIMIT, **kwargs)
        if status >= 400 and status != 304:  # 304: already started / stopped
            raise self._error(status, answer, doing)

    async def _log(self, container: str, *, follow: bool, skip: int, tty: bool,
                   idle: float | None) -> AsyncIterator[tuple[int, bytes]]:
        """One log request (see `logs`)."""
        doing = f"reading the log of {container}"
        target = self._target(f"/containers/{_quote(container)}/logs",
                              {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0"}, True)
        frames = LogFrames(tty=tty, skip=skip)
        try:
            async with asyncio.timeout(self.timeout):
                connection = await self._connection()
                try:
                    response = await connection.request("GET", target)
                except BaseException:
                    connection.close()
                    raise
                if response.status >= 400:
                    answer = await response.read(ERROR_LIMIT)
                    connection.close()
                    raise self._error(response.status, answer, doing)
        except TimeoutError:
            raise EngineFailed(self.label, f"docker did not answer within {self.timeout:g} s ({doing})",
                               timed_out=True) from None
        except (OSError, EngineProtocolError, HostError) as exc:
            if isinstance(exc, EngineRefused | EngineFailed):
                raise
            raise EngineFailed(self.label, f"lost the engine connection ({doing}): {exc}") from exc
        pieces = response.pieces()
        try:
            while True:
                try:
                    async with asyncio.timeout(idle):
                        piece = await anext(pieces, None)
                except TimeoutError:
                    raise EngineFailed(self.label, f"the log stream was silent for {idle:g} s ({doing})") from None
                if piece is None:
                    break
                for out in frames.feed(piece):
                    yield out
            if frames.partial:
                raise EngineFailed(self.label, f"the log stream ended inside a frame ({doing})")
        except FrameError as exc:
            raise EngineFailed(self.label, f"{exc} ({doing})") from None
        except (OSError, EngineProtocolError, HostError) as exc:
            if isinstance(exc, EngineFailed):
                raise
            raise EngineFailed(self.label, f"lost the engine connection ({doing}): {exc}") from exc
        finally:
            await pieces.aclose()
            response.abandon()
            self._release(connection)


class Engine(EngineHTTP):
    """One host's engine: the Docker API's calls fleet makes. Calls may run concurrently:
    each takes a connection of its own."""

    @classmethod
    async def open(cls, connector: Connector, label: str, *, timeout: float, path: str) -> Engine:
        """An Engine whose version is negotiated (EngineFailed when it does not answer as
        an engine)."""
        engine = cls(connector, label, timeout=timeout, path=path)
        # GET /_ping first, as the docker CLI does: its headers say the API version, and it
        # costs the engine nothing (Podman's /version runs conmon and the OCI runtime to ask
        # theirs: ~20 ms of the host's CPU). /version only for a server newer than fleet,
        # which may refuse fleet's version (its MinAPIVersion: Docker 29 refuses below 1.44).
        status, _, headers = await engine._exchange("GET", "/_ping", "asking its API version", versioned=False,
                                                    limit=ERROR_LIMIT)
        said = {"ApiVersion": headers.get("api-version")}
        server = _parse_api(said["ApiVersion"])
        product = headers.get("server", "")  # "Docker/20.10.24 (linux)", "Libpod/5.8.0 (linux)"
        version = product.partition("/")[2].partition(" ")[0]
        podman = "libpod-api-version" in headers or product.lower().startswith("libpod")
        if status >= 400 or server is None or server > API_VERSION:
            said = await engine._json("GET", "/version", "asking its version", versioned=False)
            components = said.get("Components") or []
            podman = podman or any("podman" in str(c.get("Name", "")).lower()
                                   for c in components if isinstance(c, dict))
            version = str(said.get("Version", version))
        try:
            api = negotiate(said)
        except ValueError as exc:
            raise EngineFailed(label, f"the engine's API: {exc}") from None
        engine.server = ServerVersion(version[:40] or "?", api, podman)
        log.debug("%s: engine %s (API %s) through %s", label, engine.server.version, engine.server.api_text, path)
        return engine

    # -- calls ---------------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        return await self._object("GET", "/info", "asking its info")

    async def image_inspect(self, name: str) -> dict[str, Any] | None:
        """`docker image inspect NAME`; None when the engine has no such image."""
        try:
            found = await self._json("GET", f"/images/{_quote(name)}/json", f"looking for the image {name}")
        except NoSuchObject:
            return None
        return found if isinstance(found, dict) else None

    async def image_ids(self) -> list[str]:
        """Every image's ID (`docker images -aq --no-trunc`)."""
        listed = await self._json("GET", "/images/json", "listing the images", query={"all": "1"})
        return [str(image.get("Id")) for image in listed or [] if isinstance(image, dict) and image.get("Id")]

    async def create(self, name: str, config: dict[str, Any]) -> str:
        """`docker create --name NAME` of this config (the API's body); the container's ID."""
        made = await self._object("POST", "/containers/create", f"creating the container {name}",
                                  query={"name": name}, body=config)
        return str(made.get("Id", ""))

    async def start(self, container: str) -> None:
        await self._empty("POST", f"/containers/{_quote(container)}/start", f"starting the container {container}")

    async def stop(self, container: str, *, grace: int) -> None:
        """`docker stop`: the container's stop signal (fleet creates it with SIGINT), SIGKILL
        after `grace` seconds; the call lasts as long."""
        await self._empty("POST", f"/containers/{_quote(container)}/stop", f"stopping the container {container}",
                          query={"t": str(grace)}, timeout=grace + self.timeout)

    async def kill(self, container: str) -> None:
        """`docker kill` (SIGKILL). Conflict when it is not running."""
        await self._empty("POST", f"/containers/{_quote(container)}/kill", f"killing the container {container}",
                          query={"signal": "KILL"})

    async def wait(self, container: str, *, timeout: float) -> int:
        """The container's exit code once it is not running (`timeout`: how long it may run)."""
        said = await self._object("POST", f"/containers/{_quote(container)}/wait",
                                  f"waiting for the container {container}",
                                  query={"condition": "not-running"}, timeout=timeout)
        error = said.get("Error") or {}
        if isinstance(error, dict) and error.get("Message"):
            raise EngineFailed(self.label, f"waiting for the container {container}: "
                                           f"{str(error['Message'])[:MESSAGE_LIMIT]}")
        return int(said.get("StatusCode", -1))

    async def inspect(self, container: str) -> dict[str, Any]:
        return await self._object("GET", f"/containers/{_quote(container)}/json",
                                  f"inspecting the container {container}")

    async def remove(self, container: str, *, force: bool = True) -> bool:
        """`docker rm [-f]`; False when there was no such container."""
        try:
            await self._empty("DELETE", f"/containers/{_quote(container)}", f"removing the container {container}",
                              query={"force": "1" if force else "0", "v": "1"})
        except NoSuchObject:
            return False
        return True

    async def logs(self, container: str, *, follow: bool, skip: int = 0, tty: bool | None = None,
                   idle: float | None = None, reread: bool = True) -> AsyncIterator[tuple[int, bytes]]:
        """The container's output as (stream, bytes) pieces, from its byte `skip` on (the
        container's stdout and stderr in order, as `docker logs 2>&1` writes them), to the
        container's end (`follow`) or the log's. `idle`: how long the stream may stay
        silent (None: without end, for a container that prints nothing for hours).

        Docker 20.10's follow can miss the last, unterminated line of a container that
        exits, through the API as through `docker logs --follow` (supervise.sh's workaround):
        once a followed log ends, the log is read once more, unfollowed, from the byte
        where the followed one stopped. `reread=False` leaves that read to a caller that
        reads the rest itself once the container has exited (Instance, after its wait: one
        call to the engine fewer per container)."""
        if tty is None:
            tty = bool((await self.inspect(container)).get("Config", {}).get("Tty"))
        seen = skip
        async for stream, piece in self._log(container, follow=follow, skip=skip, tty=tty, idle=idle):
            seen += len(piece)
            yield stream, piece
        if follow and reread:
            try:
                async for stream, piece in self._log(container, follow=False, skip=seen, tty=tty, idle=idle):
                    yield stream, piece
            except NoSuchObject:  # removed meanwhile: the followed log was all of it
                return

    # -- what fleet-image-have asks (fleet/host/images.sh, image-have.sh) ------------------------
    async def classic_store(self) -> bool:
        """Docker with a classic (graph driver) image store, whose `docker load` skips a
        layer whose chain exists; not Podman nor the containerd image store."""
        assert self.server is not None
        if self.server.podman:
            return False
        return "io.containerd.snapshotter" not in json.dumps((await self.info()).get("DriverStatus"))

    async def config_image(self, image: str, layers: Sequence[str] = ()) -> str | None:
        """images.sh's config_image: the engine's ID of `image` (a name or an ID); an image
        that is a config digest the engine does not know by that ID is looked for as
        fleet-image:HEX, whose layers must then be exactly `layers` (when given)."""
        found = await self.image_inspect(image)
        if found is not None:
            return str(found.get("Id"))
        if not image.startswith("sha256:"):
            return None
        found = await self.image_inspect("fleet-image:" + image.removeprefix("sha256:"))
        if found is None:
            return None
        if layers and list((found.get("RootFS") or {}).get("Layers") or []) != list(layers):
            return None  # a tag moved to another image is no image of that config
        return str(found.get("Id"))

    async def image_have(self, image: str, layers: Sequence[str]) -> tuple[str, str]:
        """fleet-image-have's answer over the API: ("present", the engine's ID) or ("layers",
        K): the longest prefix of `layers` some image of the host starts with, where the
        engine's load skips those (0 elsewhere)."""
        found = await self.config_image(image, layers)
        if found is not None:
            return "present", found
        if not layers or not await self.classic_store():
            return "layers", "0"
        best = 0
        for image_id in (await self.image_ids())[:IMAGES_LIMIT]:
            other = await self.image_inspect(image_id)  # removed meanwhile: None, not counted
            have = list(((other or {}).get("RootFS") or {}).get("Layers") or [])
            k = 0
            while k < len(layers) and k < len(have) and have[k] == layers[k]:
                k += 1
            best = max(best, k)
            if best == len(layers):
                break
        return "layers", str(best)
