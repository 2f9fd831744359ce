# shellcheck shell=sh
# `fleet check` for a host on the direct data path: its HTTP client, and whether it reaches
# each S3 endpoint (any HTTP answer counts: a bare endpoint refuses anonymous requests).
# KEY=VALUE lines on stdout: `http_client=curl|wget|none`, then `endpoint=ok STATUS URL` or
# `endpoint=unreachable CLIENT-STATUS URL` per endpoint.
# After http.sh. Arguments: ENDPOINT... (scheme://host[:port], never a signed URL)
if ! client=$(http_client); then
  echo 'http_client=none'
  exit 0
fi
echo "http_client=$client"
answer=${TMPDIR:-/tmp}/fleet-reach.$$
for endpoint; do
  code=$(http_get "$client" "$endpoint/" "$answer" 0)
  status=$?
  rm -f -- "$answer"
  case $code in
    000 | '') printf 'endpoint=unreachable %s %s\n' "$status" "$endpoint" ;;
    *) printf 'endpoint=ok %s %s\n' "$code" "$endpoint" ;;
  esac
done
exit 0
