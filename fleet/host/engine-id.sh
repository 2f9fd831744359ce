# shellcheck shell=sh
# `fleet-engine-id`: which engine the host's docker command talks to, as its user's login
# gives it (DOCKER_HOST, a docker context, -H in the command): one line on stdout,
#   id=ID root=DIR   Docker: `docker info`'s engine ID and root dir
#   id= root=DIR     Podman's CLI (no ID: its Docker-compatible API makes a new one up at
#                    each call), its storage's graph root
# fleet compares it with what the engine API it reached says (fleet/engine/connect.py).
# docker's stderr is dropped (`docker info` warns there: "No swap limit support"). Statuses:
# DOCKER_TIMEOUT, DOCKER_FAILED. After docker.sh.
said=$(d_bounded info --format 'id={{.ID}} root={{.DockerRootDir}}' 2>/dev/null)
status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then
  said=$(d_bounded info --format 'id= root={{.Store.GraphRoot}}' 2>/dev/null)
  status=$?
fi
case $status in
  0) printf '%s\n' "$said" ;;
  124) exit "$DOCKER_TIMEOUT" ;;
  *) exit "$DOCKER_FAILED" ;;
esac
