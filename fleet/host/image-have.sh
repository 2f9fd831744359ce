# shellcheck shell=sh
# `fleet-image-have ID DIFFID...`: what this host has of an image the controller pushes
# (fleet/image/push.py), on stdout, one line:
#   present     `docker image inspect ID` finds it
#   layers K    else: the longest prefix of the DIFFIDs (the image's RootFS layers, in
#               order) that some image of this host starts with; `docker load` skips
#               those K layers (their chain exists), so the controller omits their files
# After docker.sh. Every docker call is time-bounded; docker's words go on stderr (their
# first 4 KiB); docker failures exit with fleet.host.Status (20, 21, 22).
image_id=$1
shift

said=$(d_bounded image inspect --format '{{.Id}}' "$image_id" 2>&1)
case $? in
  0) echo present; exit 0 ;;
  124) exit 20 ;;  # DOCKER_TIMEOUT
  127) printf '%s\n' "$said" | head -c 4096 >&2; exit 21 ;;  # DOCKER_MISSING
esac
case $said in
  *"o such image"*) ;;
  *) printf '%s\n' "$said" | head -c 4096 >&2; exit 22 ;;  # DOCKER_FAILED
esac

if ! ids=$(d_bounded images -aq --no-trunc 2>&1); then
  printf '%s\n' "$ids" | head -c 4096 >&2
  exit 22  # DOCKER_FAILED (or did not answer: the listing either way)
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
