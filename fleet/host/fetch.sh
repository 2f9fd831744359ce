# shellcheck shell=sh
# Direct data path, inputs: the host GETs each object itself, with URLs the controller
# presigned (fleet/data/direct.py), into DIRECTORY (the input's partial directory; the
# session moves it into place on `go`). A file takes its name only once complete: its bytes
# go to WORK/ID first (WORK: a private directory next to DIRECTORY, removed at the end).
# After http.sh. Arguments: DIRECTORY WORK
# Stdin: requests, three lines each (the URL on stdin only, never in an argv):
#   ID OFFSET SIZE      OFFSET: bytes WORK/ID already holds from an earlier try (0: afresh)
#   RELATIVE-PATH
#   URL
# Stdout: a line per request, in order: `ID done SIZE`, `ID refused`, or
#   `ID fail HAVE HTTP CLIENT-STATUS CODE`  (HAVE: bytes WORK/ID holds now, to resume from;
#   HTTP: the status, 000 for none; CODE: S3's error code, - for none).
# The controller decides what to do about a failure: resume, sign again, give up.
dir=$1 work=$2
client=$(http_client) || { echo 'fleet:no-http-client' >&2; exit "$NO_HTTP_CLIENT"; }
{ mkdir -m 0755 -- "$dir" 2>/dev/null || [ -d "$dir" ]; } || exit
mkdir -p -- "$work" || exit
trap 'rm -rf -- "$work"' EXIT
trap 'exit 1' INT TERM HUP
more=$work/more
while IFS=' ' read -r id offset size && IFS= read -r path && IFS= read -r url; do
  if ! digits "$id" || ! digits "$offset" || ! digits "$size" || ! plain_path "$path"; then
    printf '%s refused\n' "$id"
    continue
  fi
  piece=$work/$id
  [ "$offset" -gt 0 ] || rm -f -- "$piece"
  code=$(http_get "$client" "$url" "$more" "$offset")
  status=$?
  error=-
  case $code in
    206) cat -- "$more" >> "$piece" && rm -f -- "$more" ;;
    2??) mv -f -- "$more" "$piece" ;;  # the whole object (a server may ignore the Range)
    *) error=$(s3_code "$more"); rm -f -- "$more" ;;
  esac
  have=$(file_size "$piece")
  if [ "$status" -eq 0 ] && [ "$error" = - ] && [ "$have" -eq "$size" ]; then
    case $path in
      */*) mkdir -p -- "$dir/${path%/*}" || { printf '%s fail %s %s %s -\n' "$id" "$have" "$code" 90; continue; } ;;
    esac
    if mv -f -- "$piece" "$dir/$path"; then
      printf '%s done %s\n' "$id" "$have"
      continue
    fi
    status=91
  fi
  printf '%s fail %s %s %s %s\n' "$id" "$have" "$code" "$status" "$error"
done
