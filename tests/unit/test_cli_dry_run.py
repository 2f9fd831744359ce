"""`fleet run --dry-run`: prints what would happen on every host and touches nothing.

Invalid input of any kind is exit code 2 with a one-line reason, never a traceback.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.contract.job import load_job
from fleet.inventory import load_inventory
from fleet.plan import plan_cluster, select_hosts

HOSTS_YAML = """
defaults:
  user: ops
  port: 2222
  workdir: /srv/fleet
hosts:
  - {address: gpu-01.lab, name: gpu-01, ip: 10.0.0.11, gpus: all, docker_args: ["--shm-size", "8g"]}
  - {address: gpu-02.lab, name: gpu-02, ip: 10.0.0.12, gpus: [0, 1], docker: sudo docker}
  - {address: cpu-01.lab, name: cpu-01, ip: 10.0.0.13}
"""


def request(count: int = 2, **overrides) -> dict:
    document = {
        "ProcessingJobName": "Dry-Run-Job",
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": count, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 30}},
        "AppSpecification": {"ImageUri": "registry.lab/prep:1.4",
                             "ContainerEntrypoint": ["python3", "-v", "/processing_script.py"],
                             "ContainerArguments": ["data-format", "csv"]},
        "Environment": {"GREETING": "hello world; $(touch /tmp/x)"},
        "ProcessingInputs": [{"InputName": "raw", "S3Input": {
            "S3Uri": "s3://datasets/raw/", "LocalPath": "/opt/ml/processing/input", "S3DataType": "S3Prefix"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "clean", "S3Output": {
            "S3Uri": "s3://datasets/clean/", "LocalPath": "/opt/ml/processing/output",
            "S3UploadMode": "EndOfJob"}}]},
    }
    document.update(overrides)
    return document


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "fleet-home"
    monkeypatch.setenv("FLEET_HOME", str(home))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("FLEET_ACCOUNT_ID", "123456789012")
    return home


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text(HOSTS_YAML)
    return path


def write_job(tmp_path: Path, document: dict | str, name: str = "job.json") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else json.dumps(document, indent=2))
    return path


def dry_run(job: Path, inventory: Path, *extra: str) -> int:
    return main(["run", "--dry-run", "--inventory", str(inventory), *extra, str(job)])


def sections(out: str) -> dict[str, str]:
    """The dry run's output per host: the paragraph starting `algo-k:`."""
    return {block.split(":", 1)[0]: block for block in out.split("\n\n") if block.startswith("algo-")}


def expected_docker_lines(job: Path, inventory: Path) -> dict[str, str]:
    processing_job = load_job(job)
    hosts = select_hosts(processing_job, load_inventory(inventory))
    plan = plan_cluster(processing_job, hosts, [h.ip for h in hosts], stop_grace=30,
                        region="eu-west-1", account="123456789012")
    return {hp.algo: ["docker: " + shlex.join(hp.docker + hp.docker_create),
                      "docker: " + shlex.join(hp.docker + ["start", hp.container]) + "   (once every host is ready)"]
            for hp in plan.hosts}


def test_dry_run_succeeds_and_prints_every_host(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request(count=2))
    assert dry_run(job, inventory) == 0
    out = capsys.readouterr().out
    hosts = sections(out)
    assert list(hosts) == ["algo-1", "algo-2"]  # InstanceCount hosts, in inventory order
    assert "gpu-01" in hosts["algo-1"] and "10.0.0.11" in hosts["algo-1"]
    assert "gpu-02" in hosts["algo-2"] and "10.0.0.12" in hosts["algo-2"]
    assert "cpu-01" not in out


def test_dry_run_names_the_job_and_its_arn(tmp_path, home, inventory, capsys):
    assert dry_run(write_job(tmp_path, request()), inventory) == 0
    out = capsys.readouterr().out
    assert "Dry-Run-Job" in out
    assert "arn:aws:sagemaker:eu-west-1:123456789012:processing-job/dry-run-job" in out


def test_dry_run_prints_the_files_each_host_gets(tmp_path, home, inventory, capsys):
    assert dry_run(write_job(tmp_path, request()), inventory) == 0
    hosts = sections(capsys.readouterr().out)
    for algo, text in hosts.items():
        assert f"job directory: /srv/fleet/Dry-Run-Job/{algo}" in text
        assert "write  ml/config/resourceconfig.json" in text
        assert "write  ml/config/processingjobconfig.json" in text
        for directory in ("config", "output", "inputs/1", "outputs/1"):
            assert f"mkdir  ml/{directory}/" in text
        shown = text.split("resourceconfig.json: ", 1)[1].split("\n  docker: ", 1)[0]
        assert json.loads(shown) == {"current_host": algo, "hosts": ["algo-1", "algo-2"]}


def test_dry_run_prints_the_exact_docker_command_of_each_host(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request(count=3))
    assert dry_run(job, inventory) == 0
    hosts = sections(capsys.readouterr().out)
    expected = expected_docker_lines(job, inventory)
    for algo, text in hosts.items():
        lines = [line.strip() for line in text.splitlines() if line.strip().startswith("docker: ")]
        assert lines == expected[algo]
    # What the user reads is what a shell would run: parse the printed line back.
    algo_2 = next(line.strip() for line in hosts["algo-2"].splitlines() if line.strip().startswith("docker: "))
    words = shlex.split(algo_2.removeprefix("docker: "))
    assert words[:3] == ["sudo", "docker", "create"]
    assert words[-7:] == ["--entrypoint", "python3", "registry.lab/prep:1.4",
                          "-v", "/processing_script.py", "data-format", "csv"]
    assert words[words.index("--env-file") + 1] == "/srv/fleet/Dry-Run-Job/algo-2/ml/env"
    assert '"device=0,1"' in words


def test_dry_run_creates_nothing_in_fleet_home(tmp_path, home, inventory, capsys):
    assert dry_run(write_job(tmp_path, request()), inventory) == 0
    assert not home.exists() or list(home.rglob("*")) == []


def test_dry_run_gives_the_ignored_field_notices_on_stderr(tmp_path, home, inventory, capsys):
    document = request(RoleArn="arn:aws:iam::123456789012:role/SageMakerRole")
    assert dry_run(write_job(tmp_path, document), inventory) == 0
    err = capsys.readouterr().err
    assert "RoleArn: ignored" in err
    assert "InstanceType: ignored" in err


def test_dry_run_name_override(tmp_path, home, inventory, capsys):
    assert dry_run(write_job(tmp_path, request()), inventory, "--name", "Other-Name") == 0
    out = capsys.readouterr().out
    assert "processing-job/other-name" in out
    assert "/srv/fleet/Other-Name/algo-1" in out


def test_dry_run_of_a_yaml_job(tmp_path, home, inventory, capsys):
    import yaml
    job = write_job(tmp_path, yaml.safe_dump(request()), name="job.yaml")
    assert dry_run(job, inventory) == 0
    assert "algo-2" in capsys.readouterr().out


# -- invalid input: exit 2, a reason, no traceback ------------------------------------------------

def assert_refused(capsys, code: int, *words: str) -> str:
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    for word in words:
        assert word in captured.err
    return captured.err


def test_malformed_json_is_exit_2_naming_the_file_and_line(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, '{\n  "ProcessingJobName": "x",\n  oops\n}\n')
    assert_refused(capsys, dry_run(job, inventory), str(job), "line 3")


def test_instance_count_above_the_inventory_is_exit_2(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request(count=4))
    assert_refused(capsys, dry_run(job, inventory), "InstanceCount", "4")


def test_unknown_field_is_exit_2_naming_it(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request(ProcessingJobNmae="typo"))
    assert_refused(capsys, dry_run(job, inventory), "ProcessingJobNmae", "unknown field")


def test_missing_job_file_is_exit_2_naming_it(tmp_path, home, inventory, capsys):
    missing = tmp_path / "no-such-job.json"
    assert_refused(capsys, dry_run(missing, inventory), str(missing))


def test_missing_inventory_file_is_exit_2_naming_it(tmp_path, home, capsys):
    missing = tmp_path / "no-hosts.yaml"
    assert_refused(capsys, dry_run(write_job(tmp_path, request()), missing), str(missing))


def test_invalid_field_value_is_exit_2_naming_the_field(tmp_path, home, inventory, capsys):
    document = request()
    document["ProcessingInputs"][0]["S3Input"]["LocalPath"] = "/tmp/input"
    assert_refused(capsys, dry_run(write_job(tmp_path, document), inventory),
                   "ProcessingInputs[0].S3Input.LocalPath")


@pytest.mark.parametrize("argv", [
    [],
    ["launch"],
    ["run"],
    ["run", "--dry-run", "--stop-grace", "soon", "job.json"],
    ["run", "--no-such-option", "job.json"],
])
def test_usage_errors_are_exit_2(home, capsys, argv):
    assert_refused(capsys, main(argv))


def test_invalid_input_leaves_fleet_home_untouched(tmp_path, home, inventory, capsys):
    assert main(["run", "--inventory", str(inventory), str(write_job(tmp_path, request(count=9)))]) == 2
    assert not home.exists() or list(home.rglob("*")) == []


# -- refused before anything is recorded, in both modes (exit 2) ----------------------------------

def with_input(**fields) -> dict:
    document = request()
    document["ProcessingInputs"][0]["S3Input"].update(fields)
    return document


@pytest.mark.parametrize("fields, words", [
    ({"S3InputMode": "Pipe"}, "S3InputMode: Pipe is not supported"),
    ({"S3CompressionType": "Gzip"}, "S3CompressionType: Gzip"),
    ({"S3Uri": "https://example.com/datasets/raw/"}, "not an S3 URL"),
])
@pytest.mark.parametrize("mode", [["--dry-run"], []])
def test_what_fleet_cannot_do_is_refused_before_anything_is_recorded(tmp_path, home, inventory, capsys,
                                                                      fields, words, mode):
    job = write_job(tmp_path, with_input(**fields))
    code = main(["run", *mode, "--inventory", str(inventory), str(job)])
    assert_refused(capsys, code, str(job), "ProcessingInputs[0].S3Input.", words)
    assert not home.exists() or list(home.rglob("*")) == []


def test_instance_count_above_the_inventory_names_the_inventory_file(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request(count=5))
    assert_refused(capsys, dry_run(job, inventory), "InstanceCount is 5 but the inventory has 3 host(s)",
                   str(inventory))


def test_instance_count_above_one_without_inventory_says_this_machine_alone(tmp_path, home, capsys):
    job = write_job(tmp_path, request(count=2))
    code = main(["run", "--dry-run", str(job)])
    assert_refused(capsys, code, "InstanceCount is 2", "this machine alone (no --inventory)")


def test_instance_preferences_of_sdk_v3_run(tmp_path, home, inventory, capsys):
    document = request()
    document["ProcessingResources"]["ClusterConfig"] = {
        "InstanceCount": 2, "VolumeSizeInGB": 30,
        "InstancePreferences": [{"InstanceType": "ml.g5.xlarge"}, {"InstanceType": "ml.g4dn.xlarge"}]}
    assert dry_run(write_job(tmp_path, document), inventory) == 0
    captured = capsys.readouterr()
    assert list(sections(captured.out)) == ["algo-1", "algo-2"]
    assert "InstancePreferences: ignored" in captured.err


# -- usage, --version, --help ----------------------------------------------------------------------

def test_fleet_alone_prints_the_help_and_exits_2(home, capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: fleet" in err and "run" in err and "exit codes" in err


def test_version_prints_the_package_version(home, capsys):
    from importlib.metadata import version
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fleet {version('fleet')}"


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"]])
def test_help_names_the_exit_codes_and_fleet_home(home, capsys, argv):
    assert main(argv) == 0
    out = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "124", "130"):
        assert f"\n  {code}" in out
    assert "FLEET_HOME" in out


# -- Environment values are secrets: never on a terminal line -------------------------------------

def test_dry_run_prints_environment_keys_with_values_masked(tmp_path, home, inventory, capsys):
    document = request()
    document["Environment"] = {"GREETING": "hello world; $(touch /tmp/x)", "ZQ_TOKEN": "zq-s3cr3t"}
    assert dry_run(write_job(tmp_path, document), inventory) == 0
    out = capsys.readouterr().out
    assert "zq-s3cr3t" not in out and "hello world" not in out
    for text in sections(out).values():
        assert "write  ml/env (0600, removed once the container is created): GREETING=*** ZQ_TOKEN=***" in text


def test_dry_run_masks_values_with_newlines_and_names_where_each_goes(tmp_path, home, inventory, capsys):
    document = request(count=1)  # algo-1: gpu-01, whose docker command is plain docker
    document["Environment"] = {"ZQ_TOKEN": "zq-s3cr3t", "ZQ_PEM": "-----BEGIN-----\nzq-pem-body\n",
                               "ZQ_CR": "zq-cr-value\r"}
    assert dry_run(write_job(tmp_path, document), inventory) == 0
    out = capsys.readouterr().out
    assert "zq-s3cr3t" not in out and "zq-pem-body" not in out and "BEGIN" not in out and "zq-cr-value" not in out
    for text in sections(out).values():
        assert "write  ml/env (0600, removed once the container is created): ZQ_TOKEN=***\n" in text
        assert ("write  ml/env.1 (0600, removed once the container is created): ZQ_PEM=***, set in the "
                "environment of docker create alone") in text
        assert "write  ml/env.2 (0600, removed once the container is created): ZQ_CR=***" in text
        docker = shlex.split(next(line for line in text.splitlines() if "docker: " in line and " create " in line)
                             .split("docker: ", 1)[1])
        assert [docker[i + 1] for i, word in enumerate(docker) if word == "--env"] == ["ZQ_PEM", "ZQ_CR"]


def test_dry_run_refuses_a_sudo_host_for_a_value_only_dockers_environment_carries(tmp_path, home, inventory,
                                                                                  capsys):
    document = request()  # algo-2: gpu-02, whose docker command is `sudo docker`
    document["Environment"] = {"ZQ_PEM": "a\nzq-pem-body"}
    assert dry_run(write_job(tmp_path, document), inventory) == 2
    err = capsys.readouterr().err
    assert "algo-2 (gpu-02, gpu-02.lab): Environment ZQ_PEM: " in err
    assert "starts with sudo, which gives docker a fresh environment" in err and "zq-pem-body" not in err


def test_describe_masks_environment_values_and_describe_json_keeps_them(tmp_path, home, capsys):
    from fleet.runtime.store import JobStore
    record = {"ProcessingJobName": "zq-described", "ProcessingJobStatus": "Completed",
              "CreationTime": "2024-01-01T00:00:00+00:00", "Environment": {"ZQ_TOKEN": "zq-s3cr3t", "MODE": "x"},
              "Hosts": {}}
    JobStore(home).create(record)
    assert main(["describe", "zq-described"]) == 0
    out = capsys.readouterr().out
    assert "Environment: ZQ_TOKEN=*** MODE=***" in out and "zq-s3cr3t" not in out
    assert main(["describe", "zq-described", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["Environment"] == {"ZQ_TOKEN": "zq-s3cr3t", "MODE": "x"}


def _data_job(tmp_path: Path, distribution: str, files: int) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for k in range(files):
        (source / f"part-{k:02d}.csv").write_bytes(b"x" * (k + 1))
    return write_job(tmp_path, request(count=3, ProcessingInputs=[{"InputName": "raw", "S3Input": {
        "S3Uri": f"file://{source}", "LocalPath": "/opt/ml/processing/input", "S3DataType": "S3Prefix",
        "S3DataDistributionType": distribution}}]))


def test_dry_run_with_list_inputs_shows_each_hosts_shard_its_bytes_and_path(tmp_path, home, inventory, capsys):
    assert dry_run(_data_job(tmp_path, "ShardedByS3Key", 5), inventory, "--list-inputs") == 0
    hosts = sections(capsys.readouterr().out)
    shards = {"algo-1": ["part-00", "part-03"], "algo-2": ["part-01", "part-04"], "algo-3": ["part-02"]}
    for algo, names in shards.items():
        text = hosts[algo]
        assert (f"input  raw (ShardedByS3Key of file://{tmp_path}/source) → ml/inputs/1/ by the controller path"
                in text)
        size = sum(int(name[-1]) + 1 for name in names)
        assert f"{len(names)} of 5 object(s), {size} of 15 bytes" in text
        for other in {n for ns in shards.values() for n in ns}:
            assert (f"→ {other}.csv" in text) == (other in names)
        assert "output clean (EndOfJob): ml/outputs/1/ → s3://datasets/clean/ when the job Completed" in text


def test_dry_run_counts_the_objects_past_the_first_ten(tmp_path, home, inventory, capsys):
    assert dry_run(_data_job(tmp_path, "FullyReplicated", 12), inventory, "--list-inputs") == 0
    text = sections(capsys.readouterr().out)["algo-3"]
    assert "12 of 12 object(s), 78 of 78 bytes" in text
    assert "→ part-09.csv" in text and "part-10.csv" not in text and "... and 2 more" in text


def test_dry_run_without_list_inputs_lists_nothing_and_says_so(tmp_path, home, inventory, capsys):
    assert dry_run(write_job(tmp_path, request()), inventory) == 0
    for text in sections(capsys.readouterr().out).values():
        assert ("input  raw (FullyReplicated of s3://datasets/raw/) → ml/inputs/1/ by the controller path "
                "(data_path controller: the controller streams them): not listed (--list-inputs lists them, "
                "read-only)") in text


def test_dry_run_shows_a_direct_hosts_paths(tmp_path, home, capsys):
    inventory = tmp_path / "direct.yaml"
    inventory.write_text("hosts:\n  - {address: d1.lab, ip: 10.0.0.21, data_path: direct}\n")
    document = request(count=1)
    document["ProcessingOutputConfig"]["Outputs"].append({"OutputName": "live", "S3Output": {
        "S3Uri": "s3://datasets/live/", "LocalPath": "/opt/ml/processing/live", "S3UploadMode": "Continuous"}})
    assert dry_run(write_job(tmp_path, document), inventory) == 0
    text = sections(capsys.readouterr().out)["algo-1"]
    assert "→ ml/inputs/1/ by the direct path (data_path direct: the host fetches them with presigned URLs)" in text
    assert ("output clean (EndOfJob): ml/outputs/1/ → s3://datasets/clean/ when the job Completed, by the direct "
            "path (data_path direct: the host PUTs its files with presigned URLs)") in text
    assert ("output live (Continuous): ml/outputs/2/ → s3://datasets/live/ while the container runs, and a last "
            "time, by the controller path") in text


def test_list_inputs_without_dry_run_is_refused(tmp_path, home, inventory, capsys):
    job = write_job(tmp_path, request())
    assert main(["run", "--list-inputs", "--inventory", str(inventory), str(job)]) == 2
    assert "--list-inputs goes with --dry-run" in capsys.readouterr().err
    assert not home.exists() or not list(home.rglob("*.json"))  # nothing recorded
