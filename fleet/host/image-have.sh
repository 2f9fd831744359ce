# shellcheck shell=sh
# `fleet-image-have IMAGE DIFFID...`: what this host has of an image, on stdout, one line:
#   present ID  it has the image (config_image: a config digest given as IMAGE is found by
#               its ID, or by fleet's tag with exactly these DIFFIDs; a name as it is); ID
#               is the engine's own for it
#   layers K    else: the longest prefix of the DIFFIDs (the image's RootFS layers, in
#               order) that some image of this host starts with; `docker load` skips
#               those K layers (their chain exists), so the controller omits their files.
#               Always 0 where the engine reads every layer file (classic_store: the
#               containerd image store, Podman), and without DIFFIDs (a name).
# After docker.sh and images.sh. Every docker call is time-bounded; docker's words go on
# stderr (their first 4 KiB); docker failures exit with fleet.host.Status (DOCKER_TIMEOUT, DOCKER_MISSING, DOCKER_FAILED).
image=$1
shift

said=$(config_image "$image" "$@")
case $? in
  0) printf 'present %s\n' "$said"; exit 0 ;;
  1) ;;
  "$DOCKER_TIMEOUT") exit "$DOCKER_TIMEOUT" ;;
  "$DOCKER_MISSING") printf '%s\n' "$said" | head -c 4096 >&2; exit "$DOCKER_MISSING" ;;
  *) printf '%s\n' "$said" | head -c 4096 >&2; exit "$DOCKER_FAILED" ;;
esac
if [ "$#" -eq 0 ] || ! classic_store; then echo 'layers 0'; exit 0; fi

if ! ids=$(d_bounded images -aq --no-trunc 2>&1); then
  printf '%s\n' "$ids" | head -c 4096 >&2
  exit "$DOCKER_FAILED"  # or did not answer: the listing either way
fi
if [ -z "$ids" ]; then echo 'layers 0'; exit 0; fi
# One inspect for every image: a line of its layers each. An image removed meanwhile makes
# inspect fail for it alone; the others' lines still count.
set -f
# shellcheck disable=SC2086 # on purpose: the IDs (sha256:HEX), one word each
d_bounded image inspect --format '{{range .RootFS.Layers}}{{.}} {{end}}' $ids 2>/dev/null |
  awk -v want="$*" '
    BEGIN { n = split(want, w, " ") }
    { k = 0; while (k < n && k < NF && $(k + 1) == w[k + 1]) k++; if (k > best) best = k }
    END { printf "layers %d\n", best + 0 }'
