# shellcheck shell=sh
# The host's docker command, taken from the first arguments: TIMEOUT COUNT WORD... (COUNT
# words, e.g. `2 sudo docker`); the script's own arguments follow. Every script that calls
# docker starts with this file (fleet/host/__init__.py puts them together).
#   d ARGS...          docker ARGS...
#   d_bounded ARGS...  the same, given up after TIMEOUT seconds (status 124)
#   d_log ARGS...      docker ARGS... with its stderr on its stdout (a container's log)
# The words are kept one per line and split on newlines only, with globbing off, inside
# each call's own subshell (the words never contain a newline: Python refuses those).
docker_timeout=$1 docker_count=$2
shift 2
docker_words=
while [ "$docker_count" -gt 0 ]; do
  docker_words="$docker_words$1
"
  shift; docker_count=$((docker_count - 1))
done

d() (
  IFS='
'
  set -f
  # shellcheck disable=SC2086 # on purpose: the docker command's words, split on newlines
  exec $docker_words "$@"
)

d_bounded() (
  IFS='
'
  set -f
  # shellcheck disable=SC2086 # on purpose: the docker command's words, split on newlines
  exec timeout "$docker_timeout" $docker_words "$@"
)

# The shell that waits for a docker that a signal ended says so ("Terminated") on its own
# stderr: in `d logs ... 2>&1 | ...` those words would join the container's log and its
# count (a Slurm step's SIGTERM reaches the docker CLI before the session's shell). Here
# only docker's stderr joins its stdout; the caller sends the shell's to /dev/null.
d_log() (
  IFS='
'
  set -f
  # shellcheck disable=SC2086 # on purpose: the docker command's words, split on newlines
  exec $docker_words "$@" 2>&1
)
