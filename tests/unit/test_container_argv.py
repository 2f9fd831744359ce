"""The `docker run` argv each host gets: what the container is started with.

The four ContainerEntrypoint / ContainerArguments rules are the contract's
("How Amazon SageMaker Processing Runs Your Processing Container Image").
"""

from __future__ import annotations

import shlex

import pytest

from fleet import host as hostscripts
from fleet.contract.container import env_file_content, inherited_environment
from fleet.contract.job import parse_job
from fleet.errors import InvalidInput
from fleet.inventory import Host, Inventory, SshHost
from fleet.plan import plan_cluster, select_hosts

IMAGE = "registry.lab/team/preprocess:1.4"
ADDRESSES = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]


def job(*, count: int = 1, entrypoint=None, arguments=None, environment=None, isolated=None, name="argv-job"):
    app = {"ImageUri": IMAGE}
    if entrypoint is not None:
        app["ContainerEntrypoint"] = entrypoint
    if arguments is not None:
        app["ContainerArguments"] = arguments
    document = {
        "ProcessingJobName": name,
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": app,
        "ProcessingInputs": [{"InputName": "raw", "S3Input": {
            "S3Uri": "s3://bucket/raw/", "LocalPath": "/opt/ml/processing/input", "S3DataType": "S3Prefix"}}],
    }
    if environment is not None:
        document["Environment"] = environment
    if isolated is not None:
        document["NetworkConfig"] = {"EnableNetworkIsolation": isolated}
    return parse_job(document, "job.json")


def host(index: int = 0, **fields) -> Host:
    return SshHost(address=f"node-{index + 1}.lab", name=f"node-{index + 1}", ip=ADDRESSES[index],
                   user="fleet", workdir="/srv/fleet", **fields)


def plans(processing_job, hosts=None, stop_grace: int = 30, **fields):
    """Each host's plan; `fields`: plan_cluster's others (run_id, ...)."""
    hosts = hosts or [host(i) for i in range(processing_job.instance_count)]
    return plan_cluster(processing_job, hosts, ADDRESSES[:len(hosts)], stop_grace=stop_grace,
                        region="eu-west-1", account="123456789012", **fields).hosts


def docker_create(processing_job, **kwargs) -> list[str]:
    """The argv after the host's docker command, for algo-1."""
    return plans(processing_job, **kwargs)[0].docker_create


def values_of(argv: list[str], option: str) -> list[str]:
    """Every value given to `option` (as `--option VALUE`)."""
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == option]


def after_image(argv: list[str]) -> list[str]:
    """The words Docker passes after the image: the container's command."""
    return argv[argv.index(IMAGE) + 1:]


# -- the four entrypoint / arguments rules --------------------------------------------------------

def test_neither_entrypoint_nor_arguments_runs_the_image_default_entrypoint_and_cmd():
    argv = docker_create(job())
    assert "--entrypoint" not in argv
    assert argv[-1] == IMAGE


def test_entrypoint_only_runs_the_given_entrypoint_and_ignores_the_image_cmd():
    argv = docker_create(job(entrypoint=["python3", "/opt/program/run.py", "--fast"]))
    # Docker's --entrypoint takes one word (and, when given, drops the image's CMD);
    # the other entrypoint words follow the image.
    assert argv[-5:] == ["--entrypoint", "python3", IMAGE, "/opt/program/run.py", "--fast"]
    assert values_of(argv, "--entrypoint") == ["python3"]


def test_entrypoint_of_one_word_runs_it_with_no_command():
    argv = docker_create(job(entrypoint=["/usr/local/bin/process"]))
    assert argv[-3:] == ["--entrypoint", "/usr/local/bin/process", IMAGE]
    assert after_image(argv) == []


def test_arguments_only_keep_the_image_entrypoint_and_follow_the_image():
    argv = docker_create(job(arguments=["data-format", "csv"]))
    assert "--entrypoint" not in argv
    assert argv[-3:] == [IMAGE, "data-format", "csv"]


def test_entrypoint_and_arguments_run_the_entrypoint_words_then_the_arguments():
    argv = docker_create(job(entrypoint=["python3", "-v", "/processing_script.py"], arguments=["data-format", "csv"]))
    # The contract's example: the container runs `python3 -v /processing_script.py data-format csv`.
    assert argv[-7:] == ["--entrypoint", "python3", IMAGE, "-v", "/processing_script.py", "data-format", "csv"]
    assert values_of(argv, "--entrypoint") == ["python3"]
    assert [values_of(argv, "--entrypoint")[0], *after_image(argv)] == \
        ["python3", "-v", "/processing_script.py", "data-format", "csv"]


def test_container_words_that_look_like_options_stay_after_the_image():
    argv = docker_create(job(arguments=["--rm", "-v", "/:/host"]))
    assert after_image(argv) == ["--rm", "-v", "/:/host"]
    assert "--rm" not in argv[:argv.index(IMAGE)]


# -- GPUs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpus, expected", [
    ("all", "all"),
    (2, "2"),
    ([0, 1], '"device=0,1"'),
    ([3], '"device=3"'),
    (["GPU-3f2a9c1e"], '"device=GPU-3f2a9c1e"'),
])
def test_gpus_of_the_host_become_docker_gpus(gpus, expected):
    argv = docker_create(job(), hosts=[host(gpus=gpus)])
    assert values_of(argv, "--gpus") == [expected]
    assert argv.index("--gpus") < argv.index(IMAGE)


def test_host_without_gpus_gets_no_gpus_option():
    argv = docker_create(job(), hosts=[host()])
    assert "--gpus" not in argv


def test_each_host_gets_its_own_gpus():
    run = [p.docker_create for p in plans(job(count=2), hosts=[host(0, gpus="all"), host(1)])]
    assert values_of(run[0], "--gpus") == ["all"]
    assert "--gpus" not in run[1]


# -- docker_args --------------------------------------------------------------------------------

def test_docker_args_of_the_host_come_before_the_image():
    extra = ["--shm-size", "8g", "--ipc", "host", "--ulimit", "memlock=-1"]
    argv = docker_create(job(entrypoint=["python3"]), hosts=[host(docker_args=extra)])
    start = argv.index("--shm-size")
    assert argv[start:start + len(extra)] == extra
    assert start + len(extra) <= argv.index("--entrypoint") < argv.index(IMAGE)


# -- names and labels ---------------------------------------------------------------------------

def test_each_container_is_named_job_name_dash_algo_k_and_labelled():
    for k, plan in enumerate(plans(job(count=3, name="nightly-etl")), start=1):
        argv = plan.docker_create
        assert argv[:1] == ["create"]
        assert values_of(argv, "--name") == [f"nightly-etl-algo-{k}"]
        assert plan.container == f"nightly-etl-algo-{k}"
        assert sorted(values_of(argv, "--label")) == sorted(["fleet.job=nightly-etl", f"fleet.host=algo-{k}"])
        assert values_of(argv, "--hostname") == [f"algo-{k}"]


# -- networking ---------------------------------------------------------------------------------

def test_every_algo_name_resolves_to_its_host_on_every_host():
    for plan in plans(job(count=3)):
        argv = plan.docker_create
        assert values_of(argv, "--network") == ["host"]
        assert values_of(argv, "--add-host") == [
            "algo-1:10.0.0.11", "algo-2:10.0.0.12", "algo-3:10.0.0.13"]


def test_network_isolation_gives_the_container_no_network():
    for plan in plans(job(count=2, isolated=True)):
        argv = plan.docker_create
        assert values_of(argv, "--network") == ["none"]
        assert "--add-host" not in argv


def test_network_isolation_false_keeps_host_networking():
    argv = docker_create(job(isolated=False))
    assert values_of(argv, "--network") == ["host"]


# -- stopping -----------------------------------------------------------------------------------

def test_container_is_stopped_with_sigint_then_sigkill_after_the_grace():
    argv = docker_create(job(), stop_grace=45)
    assert values_of(argv, "--stop-signal") == ["SIGINT"]
    assert values_of(argv, "--stop-timeout") == ["45"]


# -- environment --------------------------------------------------------------------------------

HOSTILE = {
    "SUBSHELL": "$(touch /tmp/x)",
    "BACKQUOTES": "`touch /tmp/y`",
    "QUOTES": "it's \"quoted\"",
    "SEMICOLON": "a; rm -rf /",
    "PADDED": "  # not a comment\t ",
    "CARRIAGE": "a\rb",
    "DOLLAR": "$HOME ${PATH}",
    "EQUALS": "a=b=c",
    "EMPTY": "",
}


def test_environment_reaches_docker_as_an_env_file_never_as_argv_words():
    """Every local user reads every process's argv (/proc/PID/cmdline): the values (often
    secrets) are in the env file the session writes, at the path the plan chose."""
    plan = plans(job(environment=HOSTILE))[0]
    argv = plan.docker_create
    assert values_of(argv, "--env-file") == [plan.env_file]
    assert plan.env_file.startswith(plan.private_dir + "/")
    assert "--env" not in argv
    assert not any(value and value in word for value in HOSTILE.values() for word in argv)


def test_the_env_file_has_one_key_equals_value_line_each_value_verbatim():
    assert env_file_content(HOSTILE) == "".join(f"{key}={value}\n" for key, value in HOSTILE.items()).encode()
    assert plans(job(environment=HOSTILE))[0].environment == env_file_content(HOSTILE)
    assert env_file_content(None) == b""


MULTILINE = {"LINES": "line1\nline2", "TRAILING": "trailing\n\n", "CR_END": "ends with CR\r", "ONLY_NL": "\n"}


def test_a_value_the_env_file_cannot_carry_is_named_in_the_argv_by_its_key_alone():
    """A newline, or a carriage return at its end: docker's env file cannot hold it, so
    docker takes it from its own environment (`--env KEY`, the name only)."""
    plan = plans(job(environment={**HOSTILE, **MULTILINE}))[0]
    argv = plan.docker_create
    assert values_of(argv, "--env") == list(MULTILINE)
    assert values_of(argv, "--env-file") == [plan.env_file]
    assert plan.inherited == MULTILINE
    assert plan.environment == env_file_content(HOSTILE)  # the env file holds the others only
    assert not any(value.strip() and value.strip() in word for value in MULTILINE.values() for word in argv)
    assert "inherited=" not in repr(plan) and "environment=" not in repr(plan)


def test_values_only_dockers_environment_carries_give_no_env_file_option():
    plan = plans(job(environment=MULTILINE))[0]
    assert "--env-file" not in plan.docker_create and plan.environment == b""
    assert values_of(plan.docker_create, "--env") == list(MULTILINE)
    assert inherited_environment(HOSTILE) == {} and inherited_environment(None) == {}


@pytest.mark.parametrize("value", ["nul\0byte", "line\n\0"])
def test_a_nul_reaches_no_container_and_is_refused_naming_its_key(value):
    with pytest.raises(InvalidInput, match="Environment.*value of ZQ_KEY contains a NUL character"):
        job(environment={"OK": "fine", "ZQ_KEY": value})
    with pytest.raises(InvalidInput, match="value of ZQ_KEY contains a NUL"):
        env_file_content({"ZQ_KEY": value}) if "\n" not in value else inherited_environment({"ZQ_KEY": value})


@pytest.mark.parametrize("docker, word", [("sudo docker", "sudo"), ("/usr/bin/sudo -n docker", "sudo"),
                                          ("doas docker", "doas"), ("su docker", "su")])
def test_a_host_whose_docker_command_drops_the_environment_is_refused_naming_host_and_key(docker, word):
    """sudo and doas give docker a fresh environment: a value only that environment carries
    would never reach the container."""
    processing_job = job(count=2, environment={"PLAIN": "x", "PEM": "-----BEGIN-----\nabc\n"})
    hosts = [host(0), host(1, docker=docker)]
    with pytest.raises(InvalidInput) as caught:
        plans(processing_job, hosts=hosts)
    message = caught.value.message
    assert message.startswith("algo-2 (node-2, node-2.lab): Environment PEM: ")
    assert f"starts with {word}, which gives docker a fresh environment" in message and "abc" not in message
    inventory = Inventory(hosts=hosts)
    with pytest.raises(InvalidInput, match="algo-2.*Environment PEM"):
        select_hosts(processing_job, inventory)  # `fleet run` refuses before anything is recorded
    # Values docker's env file carries: the host runs the job as before.
    assert plans(job(count=2, environment={"PLAIN": "x\r y"}), hosts=hosts)[1].docker == shlex.split(docker)


def test_environment_is_given_before_the_image():
    argv = docker_create(job(environment={"A": "1"}, arguments=["--env-file", "/etc/shadow"]))
    assert argv.index("--env-file") < argv.index(IMAGE)
    assert after_image(argv) == ["--env-file", "/etc/shadow"]


def test_no_environment_gives_no_env_option():
    argv = docker_create(job())
    assert "--env" not in argv and "--env-file" not in argv


def test_host_command_is_quoted_once_and_losslessly():
    processing_job = job(count=2, environment=HOSTILE,
                         entrypoint=["sh", "-c", "echo \"$0\" '$1'; exit 3"], arguments=["a b", "*", "~"])
    for plan in plans(processing_job):
        argv = hostscripts.session(plan, docker_timeout=20)
        # The transport joins the argv with shlex.join; the remote shell splits it back.
        assert shlex.split(shlex.join(argv)) == argv
        # The docker argv travels whole, word for word, as positional arguments.
        assert argv[-len(plan.docker_create):] == plan.docker_create
