"""How an SSH connection is made: the inventory's values where given, ~/.ssh/config's where
the inventory is silent (as `ssh` obeys it), OpenSSH's defaults where neither says, and never
what would hurt fleet's streams or the user (forwarded agent or X11, a TTY). Pure: a Host and
a parsed config file in, asyncssh's options out; no network."""

from __future__ import annotations

from io import BytesIO, StringIO
from pathlib import Path

import asyncssh
import pytest

from fleet.errors import HostError
from fleet.inventory import Host, SshHost
from fleet.runtime.console import Console
from fleet.runtime.instance import Instance
from fleet.runtime.store import RunOptions
from fleet.transport.scripted import ScriptedTransport
from fleet.transport.ssh import host_keys, host_plan, load_config


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ssh_config"
    path.write_text(text)
    return path


def plan_for(tmp_path: Path, text: str, **host: object):
    address = str(host.pop("address", "inner2"))
    config = load_config(address, paths=[config_file(tmp_path, text)])
    return host_plan(SshHost(address=address, **host), config), config


def asyncssh_options(tmp_path: Path, plan, address: str = "inner2") -> asyncssh.SSHClientConnectionOptions:
    """What asyncssh makes of the plan's options together with the same config file."""
    return asyncssh.SSHClientConnectionOptions(config=[str(tmp_path / "ssh_config")], host=address,
                                               known_hosts=None, tunnel=None, **plan.options)


HARMFUL = """
Host *
  ForwardAgent yes
  ForwardX11Trusted yes
  RequestTTY force
"""


# -- never what would hurt ----------------------------------------------------------------------

def test_the_config_cannot_forward_the_agent_or_x11_or_force_a_tty(tmp_path):
    plan, _ = plan_for(tmp_path, HARMFUL)
    assert plan.options["agent_forwarding"] is False
    assert plan.options["x11_forwarding"] is False
    assert plan.options["request_pty"] is False
    resolved = asyncssh_options(tmp_path, plan)
    assert resolved.agent_forward_path is None
    assert resolved.x11_forwarding is False
    assert resolved.request_pty is False


def test_without_fleets_options_asyncssh_would_obey_those_lines(tmp_path):
    # The reason the options above are set: asyncssh honours the config's lines by default.
    config_file(tmp_path, HARMFUL)
    resolved = asyncssh.SSHClientConnectionOptions(config=[str(tmp_path / "ssh_config")], host="inner2",
                                                   known_hosts=None, agent_path="/tmp/agent.sock")
    assert resolved.agent_forward_path == "/tmp/agent.sock"
    assert resolved.request_pty == "force"
    assert resolved.x11_forwarding


# -- known hosts: inventory, else config, else OpenSSH's defaults -------------------------------

def test_the_configs_known_hosts_files_decide_where_the_inventory_is_silent(tmp_path):
    plan, _ = plan_for(tmp_path, "Host inner*\n  UserKnownHostsFile /keys/user /keys/user2\n"
                                 "  GlobalKnownHostsFile /keys/global\n")
    assert plan.host_keys.files == (Path("/keys/user"), Path("/keys/user2"), Path("/keys/global"))
    assert plan.host_keys.record == Path("/keys/user")
    assert plan.host_keys.checking == "strict"


def test_the_inventorys_known_hosts_wins_over_the_configs_user_file(tmp_path):
    plan, _ = plan_for(tmp_path, "Host *\n  UserKnownHostsFile /keys/user\n  GlobalKnownHostsFile /keys/global\n",
                       known_hosts="/fleet/known_hosts")
    # As `ssh -o UserKnownHostsFile=...`: the global files still count.
    assert plan.host_keys.files == (Path("/fleet/known_hosts"), Path("/keys/global"))
    assert plan.host_keys.record == Path("/fleet/known_hosts")


def test_openssh_defaults_when_neither_inventory_nor_config_says(tmp_path):
    plan, _ = plan_for(tmp_path, "Host elsewhere\n  UserKnownHostsFile /not/for/us\n")
    home = Path("~").expanduser()
    assert plan.host_keys.files == (home / ".ssh/known_hosts", home / ".ssh/known_hosts2",
                                    Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
    assert plan.host_keys.record == home / ".ssh/known_hosts"
    assert plan.host_keys.checking == "strict"


def test_user_known_hosts_file_none_still_checks_keys(tmp_path):
    # asyncssh alone would read `UserKnownHostsFile none` as "check nothing"; OpenSSH
    # keeps the global files and refuses a host it cannot verify.
    plan, _ = plan_for(tmp_path, "Host *\n  UserKnownHostsFile none\n")
    assert plan.host_keys.checking == "strict"
    assert plan.host_keys.files == (Path("/etc/ssh/ssh_known_hosts"), Path("/etc/ssh/ssh_known_hosts2"))
    assert plan.host_keys.record is None


def test_known_hosts_files_expand_tilde_and_percent_tokens(tmp_path):
    plan, _ = plan_for(tmp_path, "Host *\n  UserKnownHostsFile ~/kh/%h\n")
    assert plan.host_keys.files[0] == Path("~/kh/inner2").expanduser()


@pytest.mark.parametrize("value, checking", [("yes", "strict"), ("ask", "strict"), ("accept-new", "accept-new"),
                                             ("no", "off"), ("off", "off"), ("Accept-New", "accept-new")])
def test_the_configs_strict_host_key_checking_decides_where_the_inventory_is_silent(tmp_path, value, checking):
    plan, _ = plan_for(tmp_path, f"Host inner2\n  StrictHostKeyChecking {value}\n")
    assert plan.host_keys.checking == checking


@pytest.mark.parametrize("mode", ["strict", "accept-new", "off"])
def test_the_inventorys_host_key_checking_wins_over_the_config(tmp_path, mode):
    plan, _ = plan_for(tmp_path, "Host *\n  StrictHostKeyChecking no\n", host_key_checking=mode)
    assert plan.host_keys.checking == mode


def test_the_first_matching_config_line_wins_as_in_openssh(tmp_path):
    plan, _ = plan_for(tmp_path, "Host inner2\n  StrictHostKeyChecking accept-new\n"
                                 "Host *\n  StrictHostKeyChecking no\n")
    assert plan.host_keys.checking == "accept-new"


def test_trusted_keys_of_missing_files_match_nothing_rather_than_the_users_file(tmp_path):
    # Empty known-hosts *bytes* make asyncssh fall back to ~/.ssh/known_hosts.
    keys = host_keys(load_config("h", paths=[]), known_hosts=str(tmp_path / "none"))
    trusted = keys.trusted()
    assert not isinstance(trusted, bytes | str) and trusted is not None
    assert asyncssh.match_known_hosts(trusted, "h", "10.0.0.1", None)[0] == []


def test_trusted_keys_come_from_every_file(tmp_path):
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    (tmp_path / "user").write_text(f"a.lab {key}")  # no newline at the end
    (tmp_path / "global").write_text(f"b.lab {key}\n")
    config = load_config("x", paths=[config_file(
        tmp_path, f"Host *\n  UserKnownHostsFile {tmp_path}/user\n  GlobalKnownHostsFile {tmp_path}/global\n")])
    trusted = host_keys(config).trusted()
    assert len(asyncssh.match_known_hosts(trusted, "a.lab", "", None)[0]) == 1
    assert len(asyncssh.match_known_hosts(trusted, "b.lab", "", None)[0]) == 1


# -- where the connection goes -----------------------------------------------------------------

def test_a_jump_host_from_the_config_is_opened_by_fleet_and_the_destination_is_the_hostname(tmp_path):
    plan, _ = plan_for(tmp_path, "Host inner*\n  HostName 10.251.7.12\n  ProxyJump root@bastion:2222\n")
    assert plan.jump == "root@bastion:2222"
    assert plan.hostname == "10.251.7.12"
    assert plan.proxied
    assert asyncssh_options(tmp_path, plan).tunnel is None  # asyncssh does not open it again


def test_a_proxy_command_is_proxied_without_a_jump(tmp_path):
    plan, _ = plan_for(tmp_path, "Host inner*\n  ProxyCommand nc %h %p\n  ProxyJump bastion\n")
    assert plan.jump is None
    assert plan.proxied


def test_a_plain_host_goes_straight_to_its_address(tmp_path):
    plan, _ = plan_for(tmp_path, "", address="10.0.0.5")
    assert (plan.jump, plan.proxied, plan.hostname) == (None, False, "10.0.0.5")


def test_the_inventorys_user_port_and_key_are_used(tmp_path):
    key = tmp_path / "id"
    key.write_text("")
    plan, _ = plan_for(tmp_path, "Host *\n  User someone\n", user="root", port=2200, identity_file=str(key),
                       connect_timeout=7)
    assert plan.options["username"] == "root"
    assert plan.options["port"] == 2200
    assert plan.options["client_keys"] == [str(key)]
    assert plan.options["connect_timeout"] == 7


def test_without_an_inventory_user_the_configs_user_is_used(tmp_path):
    plan, _ = plan_for(tmp_path, "Host inner2\n  User someone\n")
    assert "username" not in plan.options
    assert asyncssh_options(tmp_path, plan).username == "someone"


# -- the address the other hosts use --------------------------------------------------------------

class _Unreached(ScriptedTransport):
    """A host whose connection could not tell its address (a jump host, a ProxyCommand)."""

    @property
    def peer_address(self) -> str:
        return ""


def _instance(host: Host) -> Instance:
    transport = _Unreached(host, f"algo-2 ({host.label}, {host.address})", lambda command: None)
    return Instance("algo-2", host, transport, RunOptions(docker_timeout=7, host_timeout=5),
                    Console(BytesIO(), StringIO()))


def test_a_host_whose_address_is_unknown_is_refused_naming_it():
    with pytest.raises(HostError) as refused:
        _instance(SshHost(address="inner2", name="h2")).address(None)
    assert refused.value.message.startswith("algo-2 (h2, inner2): no address the other hosts can reach it at")
    assert "`ip`" in refused.value.message


def test_the_inventorys_ip_is_used_when_the_connection_cannot_tell():
    assert _instance(SshHost(address="inner2", ip="10.0.0.7")).address(None) == "10.0.0.7"


def test_trusted_keys_are_parsed_once_until_a_file_changes(tmp_path):
    known = tmp_path / "known_hosts"
    first = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known.write_text(f"a.lab {first}\n")
    keys = host_keys(load_config("a.lab", paths=[]), known_hosts=str(known))
    assert keys.trusted() is keys.trusted()
    second = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    with known.open("a") as file:  # accept-new records a host: the next connection sees it
        file.write(f"b.lab {second}\n")
    assert len(asyncssh.match_known_hosts(keys.trusted(), "b.lab", "", None)[0]) == 1
