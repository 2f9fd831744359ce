# shellcheck shell=sh
# `fleet-load ID DIFFID...`: `docker load` of the image archive on stdin (fleet/image/push.py),
# then the image must be there: config_image finds the config digest ID (by that ID, or by
# the tag fleet-image:HEX the archive's manifest gives it) with exactly these layers. Then
# `fleet:loaded ENGINE-ID` on stderr; else docker's words on stderr and LOAD_FAILED. The load
# itself is not time-bounded here: it reads as fast as the controller sends, and the
# controller bounds its wait. After docker.sh and images.sh.
image_id=$1
shift

said=$(d load 2>&1)
case $? in
  0) ;;
  127) printf '%s\n' "$said" | tail -c 4096 >&2; exit "$DOCKER_MISSING" ;;
  *) printf '%s\n' "$said" | tail -c 4096 >&2; exit "$LOAD_FAILED" ;;
esac
if ! loaded=$(config_image "$image_id" "$@"); then
  printf 'docker load ended well, yet no image of the config %s is there: %s\n' "$image_id" "$loaded" |
    head -c 4096 >&2
  exit "$LOAD_FAILED"
fi
printf 'fleet:loaded %s\n' "$loaded" >&2
