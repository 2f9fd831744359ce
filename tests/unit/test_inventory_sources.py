"""hosts.yaml's `hosts` beyond a list: a hostlist expression, the Slurm allocation, a PBS
nodefile, a hostfile; and `--inventory slurm`. Each gives hosts `{address: NAME}` in the
source's order, onto which `defaults` apply."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fleet.cli import main
from fleet.errors import InvalidInput
from fleet.inventory import load_inventory, parse_inventory

SOURCE = "hosts.yaml"
SCHEDULER_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_GPUS_ON_NODE",
                       "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "PBS_NODEFILE")


@pytest.fixture(autouse=True)
def outside_any_allocation(monkeypatch, tmp_path: Path) -> None:
    """No scheduler variables and no srun on PATH, whatever the machine running the tests has."""
    for variable in SCHEDULER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def srun_on_path(monkeypatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))


def allocation(monkeypatch, nodelist: str, **variables: str) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NODELIST", nodelist)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


def addresses(inventory) -> list[str]:
    return [host.address for host in inventory.hosts]


def refused(document, source: str = SOURCE, **kwargs) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_inventory(document, source, **kwargs)
    assert caught.value.exit_code == 2
    return caught.value.message


# -- a hostlist expression ----------------------------------------------------------------------

def test_an_expression_gives_its_hosts_in_its_order():
    inventory = parse_inventory({"hosts": "gpu-[07,01-02],dgx[1-2]"}, SOURCE)
    assert addresses(inventory) == ["gpu-07", "gpu-01", "gpu-02", "dgx1", "dgx2"]


def test_a_plain_name_is_one_host():
    assert addresses(parse_inventory({"hosts": "gpu-01"}, SOURCE)) == ["gpu-01"]


def test_defaults_apply_to_the_hosts_of_an_expression(tmp_path: Path):
    path = tmp_path / "hosts.yaml"
    path.write_text('defaults: {user: ops, port: 2222, gpus: all}\nhosts: "n[1-2]"\n')
    for host in load_inventory(path).hosts:
        assert (host.user, host.port, host.gpus, host.transport) == ("ops", 2222, "all", "ssh")


def test_a_bad_expression_is_refused_naming_it_and_the_field():
    message = refused({"hosts": "gpu-[3-1]"})
    assert message.startswith("hosts.yaml: hosts: hostlist expression 'gpu-[3-1]'")
    assert "runs backwards" in message


def test_an_expression_naming_a_host_twice_is_refused():
    assert "names n2 twice" in refused({"hosts": "n[1-3],n2"})


def test_a_bad_default_names_defaults_not_a_generated_host():
    message = refused({"defaults": {"port": 0}, "hosts": "n[1-2]"})
    assert "hosts.yaml: defaults.port:" in message


def test_hosts_of_another_type_is_refused_naming_the_forms():
    for hosts in (None, [], 3, {"address": "a"}):
        message = refused({"hosts": hosts})
        assert "hosts.yaml: hosts: must be a non-empty list of hosts, a hostlist expression" in message


# -- from: slurm --------------------------------------------------------------------------------

def test_slurm_gives_the_allocations_nodes_in_slurms_order(monkeypatch):
    allocation(monkeypatch, "gpu-[04,01-02],dgx1")
    assert addresses(parse_inventory({"hosts": {"from": "slurm"}}, SOURCE)) == ["gpu-04", "gpu-01", "gpu-02", "dgx1"]


def test_slurm_falls_back_to_slurm_nodelist(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NODELIST", "n[1-2]")
    assert addresses(parse_inventory({"hosts": {"from": "slurm"}}, SOURCE)) == ["n1", "n2"]


def test_slurm_outside_an_allocation_is_a_clear_input_error():
    message = refused({"hosts": {"from": "slurm"}})
    assert "from: slurm needs a Slurm allocation (SLURM_JOB_NODELIST is not set)" in message
    assert "run fleet inside sbatch/salloc" in message


def test_a_malformed_nodelist_names_the_variable(monkeypatch):
    allocation(monkeypatch, "n[1-")
    message = refused({"hosts": {"from": "slurm"}})
    assert "$SLURM_JOB_NODELIST" in message and "'n[1-'" in message


def test_slurm_gpus_on_node_is_every_nodes_count(monkeypatch):
    allocation(monkeypatch, "n[1-3]", SLURM_GPUS_ON_NODE="8", SLURM_JOB_GPUS="0,1,2,3,4,5,6,7")
    inventory = parse_inventory({"hosts": {"from": "slurm"}}, SOURCE)
    assert [host.gpus for host in inventory.hosts] == [8, 8, 8]  # ids name the batch node's devices only


def test_several_nodes_with_ids_only_take_their_number(monkeypatch):
    allocation(monkeypatch, "n[1-2]", SLURM_JOB_GPUS="2,3")
    assert [host.gpus for host in parse_inventory({"hosts": {"from": "slurm"}}, SOURCE).hosts] == [2, 2]


def test_a_single_node_allocation_takes_the_device_ids(monkeypatch):
    allocation(monkeypatch, "n1", SLURM_GPUS_ON_NODE="2", SLURM_JOB_GPUS="2,3")
    assert parse_inventory({"hosts": {"from": "slurm"}}, SOURCE).hosts[0].gpus == [2, 3]


def test_a_single_node_takes_the_steps_ids_without_the_jobs(monkeypatch):
    allocation(monkeypatch, "n1", SLURM_STEP_GPUS="1")
    assert parse_inventory({"hosts": {"from": "slurm"}}, SOURCE).hosts[0].gpus == [1]


def test_no_gpu_variable_means_no_gpus(monkeypatch):
    allocation(monkeypatch, "n[1-2]", SLURM_GPUS_ON_NODE="0")
    assert [host.gpus for host in parse_inventory({"hosts": {"from": "slurm"}}, SOURCE).hosts] == [None, None]


def test_defaults_gpus_wins_over_the_allocations(monkeypatch):
    allocation(monkeypatch, "n[1-2]", SLURM_GPUS_ON_NODE="8")
    inventory = parse_inventory({"defaults": {"gpus": "all"}, "hosts": {"from": "slurm"}}, SOURCE)
    assert [host.gpus for host in inventory.hosts] == ["all", "all"]


def test_a_malformed_gpu_variable_is_refused_naming_it(monkeypatch):
    allocation(monkeypatch, "n[1-2]", SLURM_GPUS_ON_NODE="eight")
    assert "$SLURM_GPUS_ON_NODE='eight'" in refused({"hosts": {"from": "slurm"}})


def test_slurm_hosts_use_srun_when_it_is_on_path(monkeypatch, srun_on_path):
    allocation(monkeypatch, "n[1-2]")
    inventory = parse_inventory({"hosts": {"from": "slurm"}}, SOURCE)
    assert [host.transport for host in inventory.hosts] == ["srun", "srun"]
    assert inventory.hosts[0].job_root == "/var/lib/fleet"


def test_slurm_hosts_use_ssh_without_srun(monkeypatch):
    allocation(monkeypatch, "n[1-2]")
    assert {host.transport for host in parse_inventory({"hosts": {"from": "slurm"}}, SOURCE).hosts} == {"ssh"}


def test_a_transport_in_defaults_wins_over_srun(monkeypatch, srun_on_path):
    allocation(monkeypatch, "n[1-2]")
    inventory = parse_inventory({"defaults": {"transport": "ssh"}, "hosts": {"from": "slurm"}}, SOURCE)
    assert {host.transport for host in inventory.hosts} == {"ssh"}


def test_only_slurm_suggests_srun(monkeypatch, srun_on_path):
    assert parse_inventory({"hosts": "n[1-2]"}, SOURCE).hosts[0].transport == "ssh"


def test_an_srun_host_needs_no_ssh_key(monkeypatch, srun_on_path, tmp_path: Path):
    allocation(monkeypatch, "n1")
    document = {"defaults": {"identity_file": str(tmp_path / "absent-key")}, "hosts": {"from": "slurm"}}
    assert parse_inventory(document, SOURCE).hosts[0].transport == "srun"


def test_an_srun_host_needs_an_absolute_workdir(monkeypatch, srun_on_path):
    allocation(monkeypatch, "n1")
    message = refused({"defaults": {"workdir": "~/fleet"}, "hosts": {"from": "slurm"}})
    assert "hosts.yaml: hosts (n1): workdir must be absolute on an srun host" in message


def test_a_host_may_say_srun_in_a_list():
    host = parse_inventory({"hosts": [{"address": "n1", "transport": "srun"}]}, SOURCE).hosts[0]
    assert host.transport == "srun"


def test_slurm_takes_no_other_key(monkeypatch):
    allocation(monkeypatch, "n1")
    assert "hosts.path: unknown field for `from: slurm`" in refused({"hosts": {"from": "slurm", "path": "x"}})


def test_an_unknown_source_is_refused():
    assert "hosts.from: must be slurm, pbs or file; got 'lsf'" in refused({"hosts": {"from": "lsf"}})


# -- --inventory slurm --------------------------------------------------------------------------

def test_the_word_slurm_is_the_allocation_without_defaults(monkeypatch, srun_on_path):
    allocation(monkeypatch, "gpu-[02,01]", SLURM_GPUS_ON_NODE="4")
    inventory = load_inventory(Path("slurm"))
    assert addresses(inventory) == ["gpu-02", "gpu-01"]
    # no defaults, and no SSH settings at all: a node reached by srun has none
    assert [(h.transport, h.gpus, getattr(h, "port", 22), getattr(h, "user", None)) for h in inventory.hosts] == \
        [("srun", 4, 22, None)] * 2


def test_the_word_slurm_wins_over_a_file_of_that_name(monkeypatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slurm").write_text("hosts: [{address: from-the-file}]\n")
    allocation(monkeypatch, "n1")
    assert addresses(load_inventory(Path("./slurm"))) == ["n1"]
    assert addresses(load_inventory(tmp_path / "slurm")) == ["from-the-file"]


def test_the_word_slurm_outside_an_allocation_names_the_option():
    with pytest.raises(InvalidInput) as caught:
        load_inventory(Path("slurm"))
    assert caught.value.message.startswith("--inventory slurm: hosts: from: slurm needs a Slurm allocation")


def test_run_dry_run_with_the_word_slurm_puts_the_first_node_at_algo_1(monkeypatch, tmp_path: Path, capsys):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("fleet.cli.socket.getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    allocation(monkeypatch, "gpu-[07,01]")
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "ProcessingJobName": "from-slurm",
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.xlarge",
                                                  "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox:1"}}))
    assert main(["run", "--dry-run", "--inventory", "slurm", str(job)]) == 0
    out = capsys.readouterr().out
    assert "algo-1: gpu-07" in out and "algo-2: gpu-01" in out


def test_run_outside_an_allocation_exits_2(tmp_path: Path, capsys):
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"ProcessingJobName": "x", "ProcessingResources": {"ClusterConfig": {
        "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 1}},
        "AppSpecification": {"ImageUri": "busybox:1"}}))
    assert main(["run", "--dry-run", "--inventory", "slurm", str(job)]) == 2
    err = capsys.readouterr().err
    assert "needs a Slurm allocation" in err and "Traceback" not in err


# -- from: pbs ----------------------------------------------------------------------------------

def test_pbs_nodefile_gives_each_host_once_in_first_seen_order(monkeypatch, tmp_path: Path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("cn07\ncn07\ncn07\ncn02\ncn02\ncn07\ncn05\n")
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    inventory = parse_inventory({"defaults": {"user": "ops"}, "hosts": {"from": "pbs"}}, SOURCE)
    assert addresses(inventory) == ["cn07", "cn02", "cn05"]
    assert {host.user for host in inventory.hosts} == {"ops"}


def test_pbs_outside_a_job_is_a_clear_input_error():
    assert "from: pbs needs a PBS allocation (PBS_NODEFILE is not set)" in refused({"hosts": {"from": "pbs"}})


def test_a_missing_pbs_nodefile_is_named(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("PBS_NODEFILE", str(tmp_path / "gone"))
    assert f"$PBS_NODEFILE {tmp_path / 'gone'}: no such file" in refused({"hosts": {"from": "pbs"}})


# -- from: file ---------------------------------------------------------------------------------

def test_a_hostfile_takes_the_first_word_skipping_comments_and_blanks(tmp_path: Path):
    (tmp_path / "hostfile").write_text(
        "# the rack's nodes\n\nnode3 slots=8\n  node1   slots=8 # the login node's twin\nnode3\n\t\nnode2\n")
    path = tmp_path / "hosts.yaml"
    path.write_text("defaults: {port: 2200}\nhosts: {from: file, path: hostfile}\n")
    inventory = load_inventory(path)  # the path is relative to the inventory's directory
    assert addresses(inventory) == ["node3", "node1", "node2"]
    assert {host.port for host in inventory.hosts} == {2200}


def test_a_missing_hostfile_is_named(tmp_path: Path):
    path = tmp_path / "hosts.yaml"
    path.write_text("hosts: {from: file, path: nodes.txt}\n")
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert f"hosts: from: file: {tmp_path / 'nodes.txt'}: no such file" in caught.value.message


def test_a_hostfile_without_hosts_is_refused(tmp_path: Path):
    (tmp_path / "nodes").write_text("# nobody\n\n")
    assert "lists no host" in refused({"hosts": {"from": "file", "path": "nodes"}}, base=tmp_path)


def test_a_file_source_needs_a_path():
    assert "`from: file` needs `path: FILE`" in refused({"hosts": {"from": "file"}})


def test_an_absolute_hostfile_path_is_kept(tmp_path: Path):
    (tmp_path / "nodes").write_text("a\nb\n")
    inventory = parse_inventory({"hosts": {"from": "file", "path": str(tmp_path / "nodes")}}, SOURCE,
                                base=Path(os.sep, "elsewhere"))
    assert addresses(inventory) == ["a", "b"]
