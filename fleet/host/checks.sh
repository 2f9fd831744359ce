# shellcheck shell=sh
# The checks a host passes before a job's container is created, run by the session
# (session.sh, which stops at the first that fails) and by `fleet check` (check.sh, which
# reports each one): the very same code. Each prints what explains its result on stdout
# (docker's words, the free KiB, ...) and returns 0, or the session's exit status for the
# failure (fleet.host.Status). Needs docker.sh.

# check_workdir WORKDIR: it exists (made when missing) and takes new entries (`fleet check`;
# the session makes it so too, its own first mkdir there for the probe).
check_workdir() {
  [ -d "$1" ] || mkdir -p -- "$1" 2>&1 || return "$WRITE_FAILED"
  mkdir -- "$1/.fleet-probe.$$" 2>&1 || return "$WRITE_FAILED"
  rmdir -- "$1/.fleet-probe.$$"
  return 0
}

# check_space WORKDIR NEED_KB: at least NEED_KB KiB free there (an unknown amount passes);
# prints the free KiB (empty when unknown): the 4th word of `df -Pk`'s second line, read by
# the shell itself (one process: every one a session starts costs the host CPU).
check_space() {
  free=
  if table=$(df -Pk -- "$1" 2>/dev/null); then
    set -f
    # shellcheck disable=SC2086 # on purpose: the line's words
    set -- "$2" ${table#*"
"}
    set +f
    case ${5:-} in '' | *[!0-9]*) ;; *) free=$5 ;; esac
  else
    set -- "$2"
  fi
  printf '%s\n' "$free"
  if [ -n "$free" ] && [ "$free" -lt "$1" ]; then return "$NO_SPACE"; fi
  return 0
}

# check_docker: docker answers within the time allowed; prints the server's version.
check_docker() {
  version=$(d_bounded version --format '{{.Server.Version}}' 2>&1)
  case $? in
    0) printf '%s\n' "$version" ;;
    124) return "$DOCKER_TIMEOUT" ;;
    127) printf '%s\n' "$version"; return "$DOCKER_MISSING" ;;
    *) printf '%s\n' "$version"; return "$DOCKER_FAILED" ;;
  esac
}

# check_image IMAGE [CONFIG_DIR]: present, or pulled now (with the registry credentials of
# the Docker client config in CONFIG_DIR, if given); prints `present ID` or `pulled ID`.
check_image() {
  said=$(image_id "$1")
  status=$?
  case $status in
    0) printf 'present %s\n' "$said"; return 0 ;;
    1) ;;
    *) printf '%s\n' "$said"; return "$status" ;;
  esac
  if [ -n "${2:-}" ]; then
    pulled=$(d --config "$2" pull --quiet "$1" 2>&1 >/dev/null)
  else
    pulled=$(d pull --quiet "$1" 2>&1 >/dev/null)
  fi
  status=$?
  if [ "$status" -ne 0 ]; then
    printf '%s\n' "$pulled"
    return "$PULL_FAILED"
  fi
  said=$(image_id "$1") || { printf 'pulled, then: %s\n' "$said"; return "$PULL_FAILED"; }
  printf 'pulled %s\n' "$said"
}

# check_gpus: docker has the NVIDIA runtime, or the host has NVIDIA CDI devices.
check_gpus() {
  d_bounded info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"' && return 0
  grep -qs 'nvidia.com/gpu' /etc/cdi/* /var/run/cdi/* || return "$NO_GPU_RUNTIME"
}

# engine_identity: which engine the docker command talks to, as the user's login gives it
# (DOCKER_HOST, a docker context, -H in the command): prints `id=ID root=DIR` (Docker's
# engine ID and root dir) or `id= root=DIR` (Podman's CLI: no ID, its storage's graph root),
# which fleet compares with what the engine API it reached says (fleet/engine/connect.py).
# docker's stderr is dropped (`docker info` warns there: "No swap limit support").
engine_identity() {
  said=$(d_bounded info --format 'id={{.ID}} root={{.DockerRootDir}}' 2>/dev/null)
  status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then
    said=$(d_bounded info --format 'id= root={{.Store.GraphRoot}}' 2>/dev/null)
    status=$?
  fi
  case $status in
    0) printf '%s\n' "$said" ;;
    124) return "$DOCKER_TIMEOUT" ;;
    *) return "$DOCKER_FAILED" ;;
  esac
}
