"""The controller creates a host's container itself, through the engine's API, where that
means what the host's `docker create` would (issue 20: no docker CLI on a session's path).

Once the session has written the job directory, the controller's image step says how the
host gets the image (`use ID`, `try NAME`: fleet.image.supply). Where the host's engine was
reached through the API and is the one its docker command talks to (`same_engine`), the
controller creates the container there from the step's image (fleet.engine.create: the
argv's request), reads the image's ID and user from the container's inspect (what `docker
create` fixed; an image inspect first would cost Docker's containerd store ~6 ms of the
host's CPU, the container's ~0.4 ms), and says `made ID UID` instead (session.sh). The
session then runs no docker command at all on the way to `prepared`: the CLI's start (~15
ms of the host's CPU a call, measured on the bed) was most of what a session cost beyond
the baseline's `docker run`.

Anything else keeps the step as it was and the session's docker command does the work: a
pull (the registry's credentials go to the host's CLI, as always), an image the engine does
not have (its create refused: the session's docker command looks, or pulls), options the
request cannot carry (GPUs, `--user`, a TTY, ...), an engine that may be another one than
the CLI's, or any failure of the API calls. A create whose answer was lost is looked for:
the container there with this run's label counts as made.
"""

from __future__ import annotations

import logging
import posixpath
import re
from typing import Any

from fleet import host as scripts
from fleet.engine.client import Engine, EngineRefused
from fleet.engine.connect import engine_plan
from fleet.engine.create import create_request
from fleet.errors import FleetError
from fleet.inventory import Host
from fleet.plan import RUN_LABEL, HostPlan

log = logging.getLogger(__name__)

IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{12,64}")
UID = re.compile(r"[0-9]{1,10}")


def same_engine(engine: Engine, host: Host, cli_engine: str | None) -> bool:
    """Whether `engine` is the one the host's docker command creates containers on: reached
    through that command (dial-stdio), at the socket the command names (`docker -H
    unix://P`), or, for a plain `docker`, at the socket its login makes it talk to
    (`cli_engine`, as the session said: DOCKER_HOST, or /var/run/docker.sock where nothing
    names another engine)."""
    if engine.path.startswith("dial-stdio"):
        return True
    plan = engine_plan(host)
    if plan.named_by_command:
        return engine.path == f"socket {plan.socket}"
    words = list(host.docker_command)
    if len(words) != 1 or posixpath.basename(words[0]) != "docker" or not cli_engine:
        return False
    return cli_engine.startswith("unix://") and engine.path == f"socket {cli_engine.removeprefix('unix://')}"


def image_user(config: dict[str, Any]) -> str:
    """The uid a container runs as, from its config's User (the image's, where `docker
    create` named none: `uid`, `uid:gid`, `name`, `name:group`; empty is root): digits, or `-`
    for a name (the session looks it up)."""
    user = str(config.get("User") or "").partition(":")[0]
    if not user:
        return "0"
    return user if UID.fullmatch(user) else "-"


def run_config(found: dict[str, Any], run_id: str) -> dict[str, Any] | None:
    """The Config of a container's inspect (`found`) where it is an object labelled with this
    run (`run_id`); None for another run's container, or an answer of another shape."""
    config = found.get("Config")
    labels = config.get("Labels") if isinstance(config, dict) else None
    return config if isinstance(labels, dict) and labels.get(RUN_LABEL) == run_id else None


async def made_step(step: bytes, plan: HostPlan, engine: Engine) -> bytes | None:
    """`made ID UID` once the controller created the container for `step` (`use ID 0`, `try
    NAME 0`) through `engine`; None where the session's docker command should (see the
    module). Never raises FleetError."""
    verb, _, rest = step.partition(b" ")
    words = rest.split(b" ")
    if verb not in (b"use", b"try") or len(words) != 2 or words[1] != b"0\n":
        return None
    reference = words[0].decode(errors="replace")
    request = create_request(plan.docker_create, image_at=plan.image_at, image=reference,
                             environment=plan.environment, inherited=plan.inherited)
    if request is None:
        return None
    name, body = request
    try:
        await engine.create(name, body)
    except EngineRefused as exc:  # no such image (the session looks, or pulls), or the CLI says why
        log.debug("%s: create through the API refused: %s", plan.algo, exc.message)
        return None
    except FleetError as exc:  # the answer lost: the container may be there all the same
        log.debug("%s: create through the API: %s", plan.algo, exc.message)
    try:  # what was made, and whether it is this run's (a lost answer's create may be another's)
        found = await engine.inspect(plan.container)
    except FleetError:
        return None
    config = run_config(found, plan.run_id)
    if config is None:
        return None
    image_id = str(found.get("Image") or "")
    if not IMAGE_ID.fullmatch(image_id):
        log.debug("%s: the container %s created through the API names no image ID", plan.algo, name)
        await _remove(engine, plan)
        return None
    log.debug("%s: created %s through the API", plan.algo, name)
    return scripts.image_made(image_id, image_user(config))


async def _remove(engine: Engine, plan: HostPlan) -> None:
    """This run's container, which the session will not use, removed (the session's own
    create would find the name taken)."""
    try:
        await engine.remove(plan.container)
    except FleetError as exc:
        log.debug("%s: removing %s through the API: %s", plan.algo, plan.container, exc.message)
