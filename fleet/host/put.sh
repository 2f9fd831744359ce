# shellcheck shell=sh
# Direct data path, outputs: the host PUTs each file itself, with URLs the controller
# presigned (fleet/data/direct.py). Only for a tree no container writes any more (its
# container has exited): a path the controller listed (`find -type f`, never through a
# symlink) is still that regular file; one that is a symlink now is not sent.
# After http.sh. Arguments: DIRECTORY WORK (a private directory for S3's answers)
# Stdin: requests, three lines each (the URL on stdin only, never in an argv):
#   ID SIZE
#   RELATIVE-PATH
#   URL
# Stdout: a line per request, in order: `ID done BYTES`, `ID gone` (no longer a regular
# file), `ID refused`, or `ID fail 0 HTTP CLIENT-STATUS CODE` (as fetch.sh).
dir=$1 work=$2
client=$(http_client) || { echo 'fleet:no-http-client' >&2; exit "$NO_HTTP_CLIENT"; }
cd -- "$dir" || exit
mkdir -p -- "$work" || exit
trap 'rm -rf -- "$work"' EXIT
trap 'exit 1' INT TERM HUP
answer=$work/answer
while IFS=' ' read -r id size && IFS= read -r path && IFS= read -r url; do
  if ! digits "$id" || ! digits "$size" || ! plain_path "$path"; then
    printf '%s refused\n' "$id"
    continue
  fi
  if [ -L "$path" ] || [ ! -f "$path" ]; then
    printf '%s gone\n' "$id"
    continue
  fi
  bytes=$(file_size "$path")
  code=$(http_put "$client" "$url" "$path" "$answer")
  status=$?
  case $code in
    2??) if [ "$status" -eq 0 ]; then printf '%s done %s\n' "$id" "$bytes"; continue; fi; error=- ;;
    *) error=$(s3_code "$answer") ;;
  esac
  printf '%s fail 0 %s %s %s\n' "$id" "$code" "$status" "$error"
done
