# shellcheck shell=sh
# The container's user, for the session: the directories the container writes (output/,
# outputs/N) are given to that user alone, never made writable by everyone (another local
# user who reaches them, through /proc/PID/root of a container process of its uid, would
# put files into the job's uploads). Needs docker.sh.

# container_uid NAME SCRATCH: the uid the created container NAME runs as (its config's User, which
# is the image's: `uid`, `uid:gid`, `name`, `name:group`; empty is root), printed; nothing
# printed when it is a name its image's /etc/passwd lacks (its start then fails, with the
# engine's words). A name is looked up in the container's own /etc/passwd (`docker cp`, one
# call, its tar in the file SCRATCH; the host's users mean nothing in the image). Status DOCKER_TIMEOUT or
# DOCKER_FAILED (the words printed) when docker fails.
container_uid() {
  said=$(d_bounded inspect --format '{{.Config.User}}' "$1" 2>&1)
  case $? in
    0) ;;
    124) return "$DOCKER_TIMEOUT" ;;
    *) printf '%s\n' "$said"; return "$DOCKER_FAILED" ;;
  esac
  user=${said%%:*}
  case $user in
    '') printf '0\n'; return 0 ;;
    *[!0-9]*) ;;
    *) printf '%s\n' "$user"; return 0 ;;
  esac
  # A tar of the one file; none: the engine's start will say the user is unknown.
  passwd_tar "$1" "$2"
  status=$?
  if [ "$status" -eq 124 ]; then rm -f -- "$2"; return "$DOCKER_TIMEOUT"; fi
  if [ "$status" -eq 0 ]; then
    tar -xOf - < "$2" 2>/dev/null | awk -F: -v user="$user" '$1 == user && $3 ~ /^[0-9]+$/ { print $3; exit }'
  fi
  rm -f -- "$2"
  return 0
}

# passwd_tar NAME SCRATCH: the container NAME's /etc/passwd as a tar in the file SCRATCH, at
# most 4 MiB (ulimit -f 8192: 512-byte blocks in dash and POSIX, 8 MiB where sh is bash; the
# image chooses the file: a bigger one fails, as a missing one).
# `cp -L` copies the file an /etc/passwd link names; Podman's own CLI has no -L (its cp
# follows the link anyway): plain `cp` when -L fails for any reason but the time limit.
passwd_tar() {
  (ulimit -f 8192 && d_bounded cp -L "$1:/etc/passwd" -) > "$2" 2>/dev/null
  status=$?
  case $status in 0 | 124) return "$status" ;; esac
  (ulimit -f 8192 && d_bounded cp "$1:/etc/passwd" -) > "$2" 2>/dev/null
}

# give_dirs UID DIR...: the DIRs become the user UID's (0755: its to write, the others'
# to read), so that a container running as UID writes them. Root (0) writes them as they
# are, and so does the SSH user its own. Only root may give a directory away (chown): a
# non-root SSH user (the docker group, a rootless engine) with an image of another uid is
# refused, naming the user, rather than the directories made writable by everyone.
give_dirs() {
  uid=$1
  shift
  [ "$uid" != 0 ] || return 0
  # The SSH user's own uid (a uid-1000 user of the docker group, an image of USER 1000): the
  # directories are its already.
  [ "$uid" != "$(id -u)" ] || return 0
  if [ "$(id -u)" != 0 ]; then
    printf '%s\n' "the image runs as uid $uid, which must write the job's output directories: fleet gives them to it with chown, which only root may do, but the SSH user is $(id -un) (use user: root for this host, or an image that runs as root)"
    return "$WRITE_FAILED"
  fi
  chown -- "$uid" "$@" || return "$WRITE_FAILED"
}
