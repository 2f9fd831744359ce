"""The container engine's HTTP API (Docker's, Podman's compatible one) over the host's one
SSH connection, instead of docker CLI processes started by a shell on the host.

Why not a library:
- aiodocker owns its aiohttp connector (a unix socket or TCP); an asyncssh channel is not an
  asyncio transport, so it would take a custom aiohttp connector faking one; and its
  `log()` decodes the stream to text, while fleet stores the container's bytes exactly.
- the `docker` SDK is synchronous (requests, a thread per call), and reaches ssh:// hosts
  through paramiko or the `ssh` command: a second connection per host.
- h11 (encode's sans-IO HTTP/1.1 parser, httpx's) parses what is fed to it and allocates
  nothing on its own: chunked encoding, keep-alive and header limits are its, the wire and
  the bounds fleet's (fleet.engine.http). The log framing is fleet's (fleet.engine.frames).

    http.py     HTTP/1.1 over any byte stream (ByteStream), bounded
    frames.py   the multiplexed / TTY log stream → the container's bytes; resume at a byte
    client.py   Engine: version negotiation, image and container calls, errors → fleet's
    connect.py  SSH socket forwarding, `docker system dial-stdio` fallback, local socket

Measured (scripts/bench-engine-probe, the bed, 20 rounds, one SSH connection): the image-have
probe of an image the host has, API against the exec-channel script: Docker 20.10 wall 4.0
against 24.8 ms, host CPU 2 against 28.5 ms; Podman 5.8 5.3 against 25.8 ms, 5 against 29 ms.
"""

from fleet.engine.client import Conflict, Engine, EngineFailed, EngineRefused, NoSuchObject

__all__ = ["Conflict", "Engine", "EngineFailed", "EngineRefused", "NoSuchObject"]
