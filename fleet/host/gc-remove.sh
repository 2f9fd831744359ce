# shellcheck shell=sh
# `fleet gc`: remove what leftovers.py chose. Arguments, in pairs:
#   container ID | dir JOB_DIR | parent JOB_PARENT (removed only when empty)
# prints `failed container:ID` / `failed dir:JOB_DIR` for what could not go.
# After docker.sh.
while [ "$#" -ge 2 ]; do
  case $1 in
    container) d_bounded rm --force "$2" >/dev/null || echo "failed container:$2" ;;
    dir) rm -rf -- "$2" || echo "failed dir:$2" ;;
    parent) rmdir -- "$2" 2>/dev/null ;;
  esac
  shift 2
done
exit 0
