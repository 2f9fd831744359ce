"""How fleet reaches a host: one interface; SSH, Slurm job steps (srun) or this machine."""

from fleet.inventory import Host, LocalHost, SrunHost
from fleet.transport.base import CommandResult, Transport


def transport_for(host: Host, label: str) -> Transport:
    """The transport the inventory asks for; `label` names the host in every error."""
    if isinstance(host, LocalHost):
        from fleet.transport.local import LocalTransport
        return LocalTransport(host, label)
    if isinstance(host, SrunHost):
        from fleet.transport.srun import SrunTransport
        return SrunTransport(host, label)
    from fleet.transport import liboqs
    with liboqs.quick_lookup():  # asyncssh's first import (see there)
        from fleet.transport.ssh import SSHTransport
    return SSHTransport(host, label)


__all__ = ["CommandResult", "Transport", "transport_for"]
