# shellcheck shell=sh
# `fleet check`: the session's own checks (checks.sh), each result a KEY=VALUE line on
# stdout for fleet/runtime/preflight.py: docker, engine (engine_identity's line, for
# fleet.engine.connect: no channel of its own), image, writable, free_kb, gpus.
# After docker.sh and checks.sh. Arguments: IMAGE ('' for none) WORKDIR NEED_KB GPUS(1|0)
# The image is looked at, never pulled: `image=present ID` or `image=missing`.
image=$1 workdir=$2 need_kb=$3 gpus=$4

last_line() { printf '%s' "$1" | tail -n 1; }

said=$(check_docker)
case $? in
  0) printf 'docker=ok %s\n' "$said" ;;
  "$DOCKER_TIMEOUT") echo 'docker=did not answer'; exit 0 ;;
  *) printf 'docker=%s\n' "$(last_line "$said")"; exit 0 ;;
esac
if said=$(engine_identity); then printf 'engine=%s\n' "$said"; fi
if [ -n "$image" ]; then
  said=$(image_id "$image")
  case $? in
    0) printf 'image=present %s\n' "$said" ;;
    1) echo 'image=missing' ;;
    "$DOCKER_TIMEOUT") echo 'image=docker did not answer' ;;
    *) printf 'image=%s\n' "$(last_line "$said")" ;;
  esac
fi
if check_workdir "$workdir" >/dev/null; then echo 'writable=yes'; else echo 'writable=no'; fi
printf 'free_kb=%s\n' "$(check_space "$workdir" "$need_kb")"
if [ "$gpus" = 1 ]; then
  if check_gpus >/dev/null; then echo 'gpus=ok'; else echo 'gpus=missing'; fi
fi
exit 0
