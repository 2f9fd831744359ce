# shellcheck shell=sh
# `fleet-load ID`: `docker load` of the image archive on stdin (fleet/image/push.py), then
# the image must be there with this ID (sha256:...): `fleet:loaded` on stderr. Else
# docker's words on stderr and LOAD_FAILED. The load itself is not time-bounded here: it
# reads as fast as the controller sends, and the controller bounds its wait.
# After docker.sh.
image_id=$1

said=$(d load 2>&1)
case $? in
  0) ;;
  127) printf '%s\n' "$said" | tail -c 4096 >&2; exit 21 ;;  # DOCKER_MISSING
  *) printf '%s\n' "$said" | tail -c 4096 >&2; exit 34 ;;  # LOAD_FAILED
esac
loaded=$(d_bounded image inspect --format '{{.Id}}' "$image_id" 2>&1)
if [ "$loaded" != "$image_id" ]; then
  printf 'docker load ended well, yet the image %s is not there: %s\n' "$image_id" "$loaded" | head -c 4096 >&2
  exit 34  # LOAD_FAILED
fi
echo 'fleet:loaded' >&2
