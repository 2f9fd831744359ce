# shellcheck shell=sh
# The host's own HTTP client, for the direct data path (fetch.sh, put.sh, reach.sh): curl,
# else GNU wget (busybox wget can neither PUT nor read a URL from stdin). A presigned URL is
# never a process's argument (/proc/PID/cmdline is world-readable): it reaches curl in a
# config read from a pipe (`-K -`), wget as an input list (`-i -`), written by printf, a
# builtin of every sh (no process of its own). Nothing here prints a URL or writes one to disk.

# The client's name, printed: curl or wget; status 1 when the host has neither.
http_client() {
  if command -v curl >/dev/null 2>&1; then echo curl; return 0; fi
  case $(wget --version 2>/dev/null) in
    *'GNU Wget'*) echo wget; return 0 ;;
  esac
  return 1
}

# The HTTP status in a header dump ($1; curl -D, wget -S): the last response's, 000 for none.
# Read from the headers as they came, so a client that dies mid-body still tells a 2xx.
_status() {
  code=$(sed -n 's/^ *HTTP\/[0-9.]* \([0-9][0-9][0-9]\).*/\1/p' -- "$1" 2>/dev/null | tail -n 1)
  printf '%s' "${code:-000}"
}

# http_get CLIENT URL OUT OFFSET: GET into OUT (from byte OFFSET on, when not 0). Prints the
# HTTP status (000 when none came); returns the client's status. OUT holds S3's error
# document when the status is not 2xx.
http_get() {
  : > "$3"
  : > "$3.headers"
  if [ "$1" = curl ]; then
    if [ "$4" -gt 0 ]; then
      printf 'url = "%s"\n' "$2" | curl -K - -s -o "$3" -D "$3.headers" -r "$4-" \
        --connect-timeout 10 --speed-limit 1 --speed-time 60 2>/dev/null
    else
      printf 'url = "%s"\n' "$2" | curl -K - -s -o "$3" -D "$3.headers" \
        --connect-timeout 10 --speed-limit 1 --speed-time 60 2>/dev/null
    fi
  elif [ "$4" -gt 0 ]; then
    printf '%s\n' "$2" | wget -q -S -O "$3" -i - --content-on-error -t 1 -T 60 \
      --header "Range: bytes=$4-" 2>"$3.headers"
  else
    printf '%s\n' "$2" | wget -q -S -O "$3" -i - --content-on-error -t 1 -T 60 2>"$3.headers"
  fi
  status=$?
  _status "$3.headers"
  rm -f -- "$3.headers"
  return "$status"
}

# http_put CLIENT URL FILE OUT: PUT FILE's bytes; S3's answer into OUT. Prints the HTTP
# status (000 when none came); returns the client's status.
http_put() {
  : > "$4"
  if [ "$1" = curl ]; then
    printf 'url = "%s"\n' "$2" | curl -K - -s -o "$4" -w '%{http_code}' -T "$3" -H 'Expect:' \
      --connect-timeout 10 --speed-limit 1 --speed-time 60 2>/dev/null
    return
  fi
  printf '%s\n' "$2" | wget -q -S -O "$4" -i - --content-on-error -t 1 -T 60 \
    --method=PUT --body-file="$3" 2>"$4.headers"
  status=$?
  _status "$4.headers"
  rm -f -- "$4.headers"
  return "$status"
}

# S3's error code in an error document ($1), letters and digits only; `-` when none.
s3_code() {
  code=$(sed -n 's/.*<Code>\([A-Za-z0-9]*\)<\/Code>.*/\1/p' -- "$1" 2>/dev/null | head -n 1)
  printf '%s' "${code:--}"
}

# The size of file $1 in bytes (0 when it does not exist).
file_size() {
  if [ -f "$1" ]; then size=$(wc -c < "$1"); echo $((size + 0)); else echo 0; fi
}

# Status 0 when $1 is a relative path of plain components: not absolute, no `.`, `..` or
# empty component (the controller decided it already; a host refuses one anyway).
plain_path() {
  case /$1/ in
    *//* | */./* | */../*) return 1 ;;
  esac
  return 0
}

# Status 0 when $1 is digits only.
digits() {
  case $1 in
    '' | *[!0-9]*) return 1 ;;
  esac
  return 0
}
