# shellcheck shell=sh
# `fleet-engine-dial SOCKET`: the engine's API on this command's stdin and stdout (`docker
# system dial-stdio` with the host's docker command, e.g. `sudo docker`: the CLI connects as
# it always does, DOCKER_HOST and contexts included), for a host whose engine socket fleet
# does not open through SSH (fleet/engine/connect.py). First one line on stdout saying what
# is at SOCKET, which tells why SSH did not forward it (sshd says "open failed" for each):
#   fleet:socket open     a socket this user may open: sshd forwards no socket to this key
#                         or host (`restrict`, `no-port-forwarding`, AllowStreamLocalForwarding)
#   fleet:socket denied   a socket this user may not open (root's, or a group's)
#   fleet:socket missing  no socket there (the engine listens elsewhere)
#   fleet:socket none     no socket was tried (SOCKET empty: the docker command runs through sudo)
# After docker.sh.
socket=$1
if [ -z "$socket" ]; then
  state=none
elif [ ! -S "$socket" ]; then
  state=missing
elif [ -r "$socket" ] && [ -w "$socket" ]; then
  state=open
else
  state=denied
fi
printf 'fleet:socket %s\n' "$state"
d system dial-stdio
