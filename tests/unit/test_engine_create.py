"""The engine API's create request made from a host's `docker create` argv (fleet.engine.create):
the same container as the CLI would create, or None where it could not promise that."""

from __future__ import annotations

import pytest
from test_container_argv import ADDRESSES, IMAGE, host, job, plans

from fleet.engine.create import create_request, env_lines
from fleet.plan import HOST_LABEL, JOB_LABEL

IMAGE_ID = "sha256:" + "ab" * 32


def request(processing_job, **kwargs):
    plan = plans(processing_job, **kwargs)[0]
    return plan, create_request(plan.docker_create, image_at=plan.image_at, image=IMAGE_ID,
                                environment=plan.environment, inherited=plan.inherited)


def test_a_plain_job_becomes_the_containers_name_and_config():
    plan, made = request(job(count=2))
    assert made is not None
    name, config = made
    assert name == plan.container
    assert config["Image"] == IMAGE_ID  # the host's image by its ID, never the tag
    assert config["Hostname"] == "algo-1"
    assert config["StopSignal"] == "SIGINT" and config["StopTimeout"] == 30
    assert config["Labels"][JOB_LABEL] == "argv-job" and config["Labels"][HOST_LABEL] == "algo-1"
    host_config = config["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["ExtraHosts"] == [f"algo-1:{ADDRESSES[0]}", f"algo-2:{ADDRESSES[1]}"]
    assert host_config["Binds"] == [mount.volume_arg() for mount in plan.mounts]
    assert any(bind.endswith(":/opt/ml/config:ro") for bind in host_config["Binds"])
    assert "Entrypoint" not in config and "Cmd" not in config  # the image's own


def test_the_environment_values_are_in_the_body_verbatim_env_file_first_then_the_others():
    environment = {"A": "1", "SECRET": "p=w d#x", "MULTI": "line1\nline2\n", "B": ""}
    _, made = request(job(environment=environment))
    assert made is not None
    env = made[1]["Env"]
    assert env == ["A=1", "SECRET=p=w d#x", "B=", "MULTI=line1\nline2\n"]


def test_entrypoint_and_arguments_follow_the_contracts_rules():
    _, made = request(job(entrypoint=["python3", "-u", "run.py"], arguments=["--x", "1"]))
    assert made is not None
    assert made[1]["Entrypoint"] == ["python3"]
    assert made[1]["Cmd"] == ["-u", "run.py", "--x", "1"]
    _, made = request(job(arguments=["--only"]))
    assert made is not None and "Entrypoint" not in made[1] and made[1]["Cmd"] == ["--only"]


def test_network_isolation_is_network_none_without_hosts():
    _, made = request(job(isolated=True))
    assert made is not None
    assert made[1]["HostConfig"]["NetworkMode"] == "none"
    assert made[1]["HostConfig"]["ExtraHosts"] == []


def test_docker_args_of_known_options_keep_their_meaning():
    docker_args = ["--label", "team=ml", "-e", "X=1", "--volume=/data:/data:ro"]
    _, made = request(job(), hosts=[host(0, docker_args=docker_args)])
    assert made is not None
    config = made[1]
    assert config["Labels"]["team"] == "ml"
    assert "X=1" in config["Env"]
    assert "/data:/data:ro" in config["HostConfig"]["Binds"]


@pytest.mark.parametrize("docker_args", [
    ["--gpus", "all"], ["--user", "1000"], ["-u", "0"], ["-t"], ["--shm-size", "1g"], ["--rm"],
    ["-v", "named:/data"], ["-e", "FROM_DOCKERS_ENVIRONMENT"], ["-eX=1"], ["--ipc=host"],
])
def test_any_other_docker_arg_leaves_the_create_to_the_cli(docker_args):
    _, made = request(job(), hosts=[host(0, docker_args=docker_args)])
    assert made is None


def test_gpus_leave_the_create_to_the_cli():
    _, made = request(job(), hosts=[host(0, gpus="all")])
    assert made is None


def test_an_argv_whose_image_word_is_not_where_the_plan_says_is_refused():
    plan = plans(job())[0]
    assert create_request(plan.docker_create, image_at=plan.image_at - 1, image=IMAGE_ID,
                          environment=plan.environment, inherited=plan.inherited) is None
    assert plan.docker_create[plan.image_at] == IMAGE


@pytest.mark.parametrize("content", [b"A=1", b"=x\n", b"NOEQUALS\n", b"\xff=1\n"])
def test_an_env_file_fleet_did_not_write_is_not_taken(content):
    assert env_lines(content) is None
