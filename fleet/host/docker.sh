# shellcheck shell=sh
# The host's docker command, taken from the first arguments: TIMEOUT COUNT WORD... (COUNT
# words, e.g. `2 sudo docker`); the script's own arguments follow. Every script that calls
# docker starts with this file (fleet/host/__init__.py puts them together).
#   d ARGS...          docker ARGS...
#   d_bounded ARGS...  the same, given up after TIMEOUT seconds (status 124)
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
