"""The controller's own create through the engine's API (fleet.runtime.creator): when it
may (the engine is the host's docker command's), what it sends the engine and the session,
and that anything short of a created container leaves the step to the session's docker."""

from __future__ import annotations

import json

import pytest
from test_container_argv import host, job, plans

from fleet import host as scripts
from fleet.engine.client import EngineFailed, EngineRefused, NoSuchObject
from fleet.inventory import SshHost
from fleet.plan import RUN_LABEL
from fleet.runtime.creator import image_user, made_step, same_engine

IMAGE_ID = "sha256:" + "ef" * 32
SOCKET = "/srv/h1/docker.sock"


class Engine:
    """The calls made_step makes, recorded; what the engine answers, given: its create's error
    (a 404 for an image it lacks), the created container's inspect (`found`: by default this
    run's container of IMAGE_ID, once created)."""

    def __init__(self, path: str = f"socket {SOCKET}", *, create: Exception | None = None,
                 found: dict | None = None, user: str = "") -> None:
        self.path = path
        self.create_error = create
        self.found = found
        self.user = user
        self.created: dict | None = None
        self.calls: list[tuple] = []

    async def create(self, name: str, config: dict) -> str:
        self.calls.append(("create", name, json.dumps(config)))
        if self.create_error is not None:
            raise self.create_error
        self.created = config
        return "0123"

    async def inspect(self, container: str) -> dict:
        self.calls.append(("inspect", container))
        if self.found is not None:
            return self.found
        if self.created is None:
            raise EngineFailed("h1", "no answer")
        return {"Image": IMAGE_ID, "Config": {**self.created, "User": self.user}}

    async def remove(self, container: str) -> bool:
        self.calls.append(("remove", container))
        return True


def ssh_host(**fields) -> SshHost:
    return SshHost(address="h1", **fields)


@pytest.mark.parametrize("engine_path, fields, cli, same", [
    (f"socket {SOCKET}", {"engine_socket": SOCKET}, f"unix://{SOCKET}", True),
    (f"socket {SOCKET}", {"engine_socket": SOCKET}, "unix:///var/run/docker.sock", False),  # a login's other engine
    (f"socket {SOCKET}", {"engine_socket": SOCKET}, None, False),  # the login did not tell
    ("socket /var/run/docker.sock", {}, "unix:///var/run/docker.sock", True),
    ("socket /var/run/docker.sock", {"docker": "podman"}, "unix:///var/run/docker.sock", False),
    ("socket /var/run/docker.sock", {"docker": "sudo docker"}, "unix:///var/run/docker.sock", False),
    (f"socket {SOCKET}", {"docker": f"docker -H unix://{SOCKET}"}, None, True),  # the command names it
    ("dial-stdio (no socket)", {"docker": "sudo docker"}, None, True),  # the command's own way
])
def test_the_controller_creates_only_on_the_engine_the_hosts_docker_command_talks_to(engine_path, fields, cli, same):
    assert same_engine(Engine(engine_path), ssh_host(**fields), cli) is same


@pytest.mark.parametrize("user, uid", [("", "0"), ("1000", "1000"), ("1000:100", "1000"), ("app", "-"),
                                       ("app:app", "-"), ("0", "0"), ("1 0", "-")])
def test_the_uid_is_the_containers_user_a_name_is_left_to_the_session(user, uid):
    assert image_user({"User": user}) == uid


def _plan(**host_fields):
    return plans(job(environment={"SECRET": "s3cr3t"}), hosts=[host(0, **host_fields)], run_id="run-1")[0]


async def test_the_step_s_image_is_created_from_and_the_session_told_made_with_the_containers_image_and_user():
    plan = _plan()
    engine = Engine(user="1000:1000")
    reference = plan.docker_create[plan.image_at]
    made = await made_step(scripts.image_try(reference), plan, engine)
    assert made == scripts.image_made(IMAGE_ID, "1000")
    assert [call[0] for call in engine.calls] == ["create", "inspect"]  # no image inspect
    name, body = engine.calls[0][1], json.loads(engine.calls[0][2])
    assert name == plan.container and body["Image"] == reference
    assert "SECRET=s3cr3t" in body["Env"]  # in the request, never on the host's disk


@pytest.mark.parametrize("step", [scripts.image_pull("repo/img:1", b'{"auths": {}}'), b"use sha256:ab 1\n",
                                  b"abort\n"])
async def test_a_pull_or_anything_else_is_left_to_the_session(step):
    engine = Engine()
    assert await made_step(step, _plan(), engine) is None
    assert engine.calls == []


async def test_an_image_the_engine_lacks_is_left_to_the_session():
    engine = Engine(create=NoSuchObject("h1", 404, "No such image: repo/img:1"))
    assert await made_step(scripts.image_try("repo/img:1"), _plan(), engine) is None
    assert [call[0] for call in engine.calls] == ["create"]


async def test_options_the_request_cannot_carry_leave_the_create_to_the_docker_cli():
    engine = Engine()
    assert await made_step(scripts.image_use(IMAGE_ID), _plan(docker_args=["--shm-size", "1g"]), engine) is None
    assert engine.calls == []


async def test_a_refused_create_is_the_clis_to_make_and_to_word():
    engine = Engine(create=EngineRefused("h1", 400, "invalid mount config"))
    assert await made_step(scripts.image_use(IMAGE_ID), _plan(), engine) is None


async def test_a_create_whose_answer_was_lost_counts_if_the_container_is_this_runs():
    plan = _plan()
    theirs = Engine(create=EngineFailed("h1", "the connection closed"),
                    found={"Image": IMAGE_ID, "Config": {"Labels": {RUN_LABEL: "another-run"}}})
    assert await made_step(scripts.image_use(IMAGE_ID), plan, theirs) is None
    assert "remove" not in [call[0] for call in theirs.calls]  # another run's is never touched
    ours = Engine(create=EngineFailed("h1", "the connection closed"),
                  found={"Image": IMAGE_ID, "Config": {"Labels": {RUN_LABEL: plan.run_id}}})
    assert await made_step(scripts.image_use(IMAGE_ID), plan, ours) == scripts.image_made(IMAGE_ID, "0")


async def test_an_engine_id_that_is_no_id_is_never_passed_to_the_session_and_the_container_goes():
    plan = _plan()
    engine = Engine(found={"Image": "sha256:ab cd\nprepared", "Config": {"Labels": {RUN_LABEL: plan.run_id}}})
    assert await made_step(scripts.image_use(IMAGE_ID), plan, engine) is None
    assert engine.calls[-1] == ("remove", plan.container)  # the session's own create finds the name free


@pytest.mark.parametrize("config", ["Labels", ["Labels"], {"Labels": "fleet.run=run-1"}])
async def test_a_containers_config_of_another_shape_is_no_container_of_this_run(config):
    """The host's engine answers the inspect with a Config (or its Labels) that is no object:
    the step is the session's, and nothing raises past made_step."""
    plan = _plan()
    engine = Engine(found={"Image": IMAGE_ID, "Config": config})
    assert await made_step(scripts.image_use(IMAGE_ID), plan, engine) is None
