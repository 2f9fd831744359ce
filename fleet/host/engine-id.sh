# shellcheck shell=sh
# `fleet-engine-id`: engine_identity's line on stdout (checks.sh): which engine the host's
# docker command talks to. Statuses: DOCKER_TIMEOUT, DOCKER_FAILED. After docker.sh and
# checks.sh.
engine_identity
