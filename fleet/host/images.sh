# shellcheck shell=sh
# How a host's engine names an image, for the session, `fleet check`, image-have and load.
# Needs docker.sh.
#
# "The same image" is the same image config (its sha256 digest: the config pins every
# layer's content by its diff ID). Classic Docker stores (any version) and Podman give an
# image that ID. Docker's containerd image store (the default of new Docker 29 installs)
# gives it the digest of a manifest instead, which depends on how the image was loaded, and
# finds no image by its config digest: an image fleet pushes is loaded with one more tag,
# fleet-image:HEX (HEX: the config digest's), through which every engine finds it.

# inspect_image FORMAT IMAGE: `docker image inspect --format FORMAT IMAGE`, printed;
# status 1 when the host has no such image, docker's statuses (DOCKER_TIMEOUT, DOCKER_MISSING, DOCKER_FAILED) when docker fails
# (its words printed, but for a timeout). Every engine's way of saying "no such image".
inspect_image() {
  inspected=$(d_bounded image inspect --format "$1" "$2" 2>&1)
  case $? in
    0) printf '%s\n' "$inspected"; return 0 ;;
    124) return "$DOCKER_TIMEOUT" ;;
    127) printf '%s\n' "$inspected"; return "$DOCKER_MISSING" ;;
  esac
  case $inspected in
    *"o such image"* | *"image not known"* | *"failed to find image"*) return 1 ;;
    *) printf '%s\n' "$inspected"; return "$DOCKER_FAILED" ;;
  esac
}

# image_id IMAGE: the ID of the host's image IMAGE (a name, NAME@DIGEST or an ID), printed;
# statuses as inspect_image's.
image_id() {
  inspect_image '{{.Id}}' "$1"
}

# config_image IMAGE [DIFFID...]: as image_id, and an IMAGE that is a config digest
# (sha256:HEX) the engine does not know by that ID is looked for as fleet-image:HEX, whose
# layers must then be exactly the DIFFIDs given (when given): a tag moved to another image
# is no image of that config. Prints the engine's ID of the image.
config_image() {
  said=$(image_id "$1")
  status=$?
  case $status:$1 in
    1:sha256:*) ;;
    *) [ -z "$said" ] || printf '%s\n' "$said"; return "$status" ;;
  esac
  want=$1
  shift
  inspected=$(inspect_image '{{.Id}} {{range .RootFS.Layers}}{{.}} {{end}}' "fleet-image:${want#sha256:}")
  status=$?
  if [ "$status" -ne 0 ]; then
    [ -z "$inspected" ] || printf '%s\n' "$inspected"
    return "$status"
  fi
  if [ "$#" -gt 0 ] && [ "${inspected#* }" != "$* " ]; then return 1; fi
  printf '%s\n' "${inspected%% *}"
}

# classic_store: the engine is Docker with a classic (graph driver) image store, whose
# `docker load` skips a layer file when the layer's chain exists. The containerd store
# and Podman read every layer named in the archive: they get the whole image.
classic_store() {
  d_bounded version --format '{{range .Server.Components}}{{.Name}};{{end}}' 2>/dev/null | grep -q 'Podman' && return 1
  d_bounded info --format '{{json .DriverStatus}}' 2>/dev/null | grep -q 'io.containerd.snapshotter' && return 1
  return 0
}
