"""hosts.yaml: the machines a job may run on. The first InstanceCount become algo-1..algo-N."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.errors import InvalidInput
from fleet.inventory import load_inventory, parse_inventory

SOURCE = "hosts.yaml"


def refused(document, source: str = SOURCE) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_inventory(document, source)
    assert caught.value.exit_code == 2
    return caught.value.message


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    return path


# -- defaults -----------------------------------------------------------------------------------

def test_defaults_apply_to_every_host(tmp_path: Path):
    inventory = load_inventory(write(tmp_path, """
defaults:
  user: ops
  port: 2222
  workdir: /srv/fleet
  docker_args: ["--shm-size", "8g"]
hosts:
  - address: a.lab
  - address: b.lab
"""))
    for host in inventory.hosts:
        assert (host.user, host.port, host.workdir, host.docker_args) == ("ops", 2222, "/srv/fleet",
                                                                          ["--shm-size", "8g"])


def test_a_hosts_own_value_wins_over_defaults(tmp_path: Path):
    inventory = load_inventory(write(tmp_path, """
defaults: {user: ops, port: 2222, gpus: all, docker: docker}
hosts:
  - {address: a.lab, user: root, port: 22, gpus: [1], docker: sudo docker}
  - {address: b.lab}
"""))
    a, b = inventory.hosts
    assert (a.user, a.port, a.gpus, a.docker_command) == ("root", 22, [1], ["sudo", "docker"])
    assert (b.user, b.port, b.gpus, b.docker_command) == ("ops", 2222, "all", ["docker"])


def test_built_in_defaults_when_nothing_is_given():
    host = parse_inventory({"hosts": [{"address": "a.lab"}]}, SOURCE).hosts[0]
    assert host.transport == "ssh"
    assert host.port == 22
    assert host.host_key_checking is None  # the SSH config decides, else strict
    assert host.docker_command == ["docker"]
    assert host.docker_args == []
    assert host.gpus is None
    assert host.label == "a.lab"
    assert host.job_root == "/var/lib/fleet"


# -- order --------------------------------------------------------------------------------------

def test_hosts_keep_inventory_order():
    names = ["zeta", "alpha", "mid", "beta"]
    inventory = parse_inventory({"hosts": [{"address": f"{n}.lab", "name": n} for n in names]}, SOURCE)
    assert [h.label for h in inventory.hosts] == names


# -- identity_file ------------------------------------------------------------------------------

def test_missing_identity_file_names_the_file_and_the_host(tmp_path: Path):
    missing = tmp_path / "id_missing"
    message = refused({"hosts": [
        {"address": "a.lab", "name": "gpu-01"},
        {"address": "b.lab", "name": "gpu-02", "identity_file": str(missing)},
    ]})
    assert str(missing) in message
    assert "gpu-02" in message and "hosts[1]" in message
    assert "gpu-01" not in message


def test_missing_identity_file_from_defaults_names_the_first_host(tmp_path: Path):
    message = refused({"defaults": {"identity_file": str(tmp_path / "nope")},
                       "hosts": [{"address": "a.lab"}]})
    assert str(tmp_path / "nope") in message and "a.lab" in message


def test_existing_identity_file_is_accepted(tmp_path: Path):
    key = tmp_path / "id_ed25519"
    key.write_text("not really a key")
    host = parse_inventory({"hosts": [{"address": "a.lab", "identity_file": str(key)}]}, SOURCE).hosts[0]
    assert host.identity_file == str(key)


def test_identity_file_of_a_local_host_is_not_needed(tmp_path: Path):
    # (a local host that names one itself is refused: test_a_local_host_refuses_ssh_settings_naming_them)
    inventory = parse_inventory({"defaults": {"identity_file": str(tmp_path / "nope")}, "hosts": [
        {"address": "localhost", "transport": "local"}]}, SOURCE)
    assert inventory.hosts[0].transport == "local"


# -- each transport's settings ------------------------------------------------------------------

SSH_SETTINGS = {"user": "ops", "port": 2222, "identity_file": "~/.ssh/id_fleet", "known_hosts": "/k",
                "host_key_checking": "off", "connect_timeout": 5}


@pytest.mark.parametrize("transport", ["local", "srun"])
@pytest.mark.parametrize("key", sorted(SSH_SETTINGS))
def test_a_local_host_refuses_ssh_settings_naming_them(transport, key):
    """A setting of SSH given to a host SSH does not reach was ignored, silently: a `port:`
    on a local host, or a `user:` on a Slurm node reached by srun, did nothing."""
    message = refused({"hosts": [{"address": "a.lab"},
                                 {"address": "n1", "name": "gpu-01", "transport": transport, key: SSH_SETTINGS[key]}]})
    assert message == (f"hosts.yaml: hosts[1].{key}: not a setting of a {transport} host (gpu-01): "
                       f"only ssh hosts take it")


def test_ssh_defaults_serve_the_ssh_hosts_and_skip_a_local_one(tmp_path: Path):
    key = tmp_path / "id_fleet"
    key.write_text("not really a key")
    inventory = parse_inventory({"defaults": {"user": "ops", "port": 2222, "identity_file": str(key),
                                              "docker": "sudo docker"},
                                 "hosts": [{"address": "a.lab"}, {"address": "localhost", "transport": "local"},
                                           {"address": "n1", "transport": "srun"}]}, SOURCE)
    remote, local, node = inventory.hosts
    assert (remote.transport, remote.user, remote.port, remote.identity_file) == ("ssh", "ops", 2222, str(key))
    assert local.model_dump(include={"transport", "docker"}) == {"transport": "local", "docker": "sudo docker"}
    assert node.model_dump(include={"transport", "docker"}) == {"transport": "srun", "docker": "sudo docker"}
    assert not {"user", "port", "identity_file"} & (set(local.model_dump()) | set(node.model_dump()))


def test_a_host_without_a_transport_is_an_ssh_host():
    host = parse_inventory({"hosts": [{"address": "a.lab"}]}, SOURCE).hosts[0]
    assert type(host).__name__ == "SshHost" and host.model_dump()["transport"] == "ssh"


@pytest.mark.parametrize("where, document", [
    ("hosts[0].transport", {"hosts": [{"address": "a", "transport": "telnet"}]}),
    ("defaults.transport", {"defaults": {"transport": ["ssh"]}, "hosts": [{"address": "a"}]}),
])
def test_an_unknown_transport_is_refused_naming_the_field(where, document):
    assert refused(document).startswith(f"hosts.yaml: {where}: must be ssh, local or srun; got ")


def test_a_misspelt_key_stays_unknown_on_every_transport():
    assert refused({"hosts": [{"address": "l", "transport": "local", "prot": 22}]}) == \
        "hosts.yaml: hosts[0].prot: unknown field"


def test_a_bad_ssh_value_is_named_without_the_unions_tag():
    assert refused({"hosts": [{"address": "a", "connect_timeout": 0}]}).startswith(
        "hosts.yaml: hosts[0].connect_timeout: Input should be greater than 0")


def test_every_example_inventory_loads(tmp_path: Path, monkeypatch):
    examples = sorted(Path(__file__).resolve().parents[2].glob("configs/*hosts*.yaml"))
    assert examples
    monkeypatch.setenv("HOME", str(tmp_path))  # the examples' identity_file: ~/.ssh/id_ed25519
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "id_ed25519").write_text("not really a key")
    for path in examples:
        assert load_inventory(path).hosts, path


# -- unknown keys -------------------------------------------------------------------------------

def test_unknown_host_key_is_refused_naming_it():
    message = refused({"hosts": [{"address": "a.lab"}, {"address": "b.lab", "gpu": "all"}]})
    assert "hosts.yaml: hosts[1].gpu: unknown field" in message


def test_unknown_key_in_defaults_is_refused_naming_it():
    message = refused({"defaults": {"usr": "ops"}, "hosts": [{"address": "a.lab"}]})
    assert "usr" in message and "unknown field" in message


def test_unknown_top_level_key_is_refused_naming_it():
    message = refused({"host": [{"address": "a.lab"}]})
    assert "host" in message and "unknown field" in message


def test_host_without_an_address_is_refused():
    assert "hosts[0].address" in refused({"hosts": [{"name": "nameless"}]})


@pytest.mark.parametrize("document", [None, [], "hosts", {"hosts": []}, {"hosts": None}, {"hosts": ["a.lab"]}])
def test_inventory_without_a_list_of_host_mappings_is_refused(document):
    assert SOURCE in refused(document)


# -- gpus ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gpus", ["all", 1, 4, [0], [0, 1], ["GPU-3f2a9c1e"], ["0", 2]])
def test_gpus_forms_are_accepted(gpus):
    assert parse_inventory({"hosts": [{"address": "a", "gpus": gpus}]}, SOURCE).hosts[0].gpus == gpus


@pytest.mark.parametrize("gpus", [0, -1, [], "some", "device=0", ["0,1"], ['"0"'], ["a=b"], [""], ["0 1"]])
def test_other_gpus_values_are_refused(gpus):
    assert "hosts[0].gpus" in refused({"hosts": [{"address": "a", "gpus": gpus}]})


def test_gpus_absent_means_no_gpus():
    assert parse_inventory({"hosts": [{"address": "a"}]}, SOURCE).hosts[0].gpus is None


# -- names --------------------------------------------------------------------------------------

def test_duplicate_names_are_refused():
    message = refused({"hosts": [{"address": "a.lab", "name": "gpu"}, {"address": "b.lab", "name": "gpu"}]})
    assert "'gpu'" in message


def test_duplicate_addresses_without_names_are_refused():
    assert "a.lab" in refused({"hosts": [{"address": "a.lab"}, {"address": "a.lab"}]})


def test_same_address_under_distinct_names_is_accepted():
    inventory = parse_inventory({"hosts": [{"address": "a.lab", "name": "one"},
                                           {"address": "a.lab", "name": "two"}]}, SOURCE)
    assert [h.label for h in inventory.hosts] == ["one", "two"]


# -- no inventory -------------------------------------------------------------------------------

def test_no_inventory_is_this_machine_alone():
    inventory = load_inventory(None)
    assert len(inventory.hosts) == 1
    host = inventory.hosts[0]
    assert host.transport == "local"
    assert host.address == "localhost"


def test_local_host_works_under_fleet_home(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("FLEET_HOME", str(tmp_path / "home"))
    assert load_inventory(None).hosts[0].job_root == str(tmp_path / "home" / "work")


def test_missing_inventory_file_names_it(tmp_path: Path):
    with pytest.raises(InvalidInput) as caught:
        load_inventory(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in caught.value.message


def test_malformed_inventory_names_the_file(tmp_path: Path):
    path = write(tmp_path, "hosts: [unclosed\n")
    with pytest.raises(InvalidInput) as caught:
        load_inventory(path)
    assert str(path) in caught.value.message


# -- host_key_checking --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["strict", "accept-new", "off"])
def test_host_key_checking_modes_are_accepted(mode):
    host = parse_inventory({"hosts": [{"address": "a", "host_key_checking": mode}]}, SOURCE).hosts[0]
    assert host.host_key_checking == mode


@pytest.mark.parametrize("mode", ["yes", "no", "Strict", "", "false", 0])
def test_other_host_key_checking_values_are_refused(mode):
    # Quoted words other than the three modes are refused; YAML's unquoted booleans are not (below).
    assert "hosts[0].host_key_checking" in refused({"hosts": [{"address": "a", "host_key_checking": mode}]})


# -- docker -------------------------------------------------------------------------------------

def test_docker_command_of_several_words_is_split(tmp_path: Path):
    inventory = load_inventory(write(tmp_path, "hosts:\n  - address: a.lab\n    docker: sudo docker\n"))
    assert inventory.hosts[0].docker_command == ["sudo", "docker"]


def test_docker_command_keeps_quoted_words():
    host = parse_inventory({"hosts": [{"address": "a", "docker": "'/opt/my docker/bin/docker'"}]}, SOURCE).hosts[0]
    assert host.docker_command == ["/opt/my docker/bin/docker"]


@pytest.mark.parametrize("docker", ["", "   "])
def test_empty_docker_command_is_refused(docker):
    assert "hosts[0].docker" in refused({"hosts": [{"address": "a", "docker": docker}]})


# -- other limits -------------------------------------------------------------------------------

@pytest.mark.parametrize("port", [0, 65536])
def test_port_outside_1_to_65535_is_refused(port):
    assert "hosts[0].port" in refused({"hosts": [{"address": "a", "port": port}]})


@pytest.mark.parametrize("workdir", ["relative/dir", "/srv/a:b", "~/fleet"])
def test_workdir_of_an_ssh_host_must_be_an_absolute_path_without_colons(workdir):
    assert "workdir" in refused({"hosts": [{"address": "a", "workdir": workdir}]})


def test_workdir_of_a_local_host_may_start_with_tilde():
    host = parse_inventory({"hosts": [{"address": "l", "transport": "local", "workdir": "~/fleet"}]},
                           SOURCE).hosts[0]
    assert not host.job_root.startswith("~")


# -- host_key_checking as YAML reads it; messages name where a value was written ----------------

def test_unquoted_off_as_the_readme_shows_it_turns_checking_off(tmp_path: Path):
    # YAML reads an unquoted `off` as the boolean false.
    inventory = load_inventory(write(tmp_path, "defaults:\n  host_key_checking: off\nhosts:\n  - address: a.lab\n"))
    assert inventory.hosts[0].host_key_checking == "off"


@pytest.mark.parametrize("word, mode", [("off", "off"), ("no", "off"), ("false", "off"),
                                        ("on", "strict"), ("yes", "strict"), ("true", "strict"),
                                        ("'off'", "off"), ("accept-new", "accept-new")])
def test_yaml_booleans_for_host_key_checking_mean_off_and_strict(tmp_path: Path, word, mode):
    inventory = load_inventory(write(tmp_path, f"hosts:\n  - address: a.lab\n    host_key_checking: {word}\n"))
    assert inventory.hosts[0].host_key_checking == mode


def test_a_bad_value_in_defaults_is_named_as_defaults_once():
    message = refused({"defaults": {"host_key_checking": "maybe"},
                       "hosts": [{"address": "a"}, {"address": "b"}, {"address": "c"}]})
    assert f"{SOURCE}: defaults.host_key_checking:" in message
    assert "hosts[" not in message
    assert message.count("defaults.host_key_checking") == 1
    assert "strict, accept-new or off" in message


def test_a_bad_value_on_a_host_is_named_as_that_host():
    message = refused({"defaults": {"host_key_checking": "strict"},
                       "hosts": [{"address": "a"}, {"address": "b"}, {"address": "c", "host_key_checking": "maybe"}]})
    assert f"{SOURCE}: hosts[2].host_key_checking:" in message
    assert "defaults" not in message


def test_a_bad_port_in_defaults_is_named_as_defaults():
    message = refused({"defaults": {"port": 0}, "hosts": [{"address": "a"}, {"address": "b", "port": 22}]})
    assert f"{SOURCE}: defaults.port:" in message
    assert "hosts[" not in message


def test_a_missing_identity_file_from_defaults_is_named_as_defaults(tmp_path: Path):
    missing = tmp_path / "no-such-key"
    message = refused({"defaults": {"identity_file": str(missing)}, "hosts": [{"address": "a"}, {"address": "b"}]})
    assert f"defaults.identity_file {missing} does not exist" in message
    assert "hosts[" not in message
