# shellcheck shell=sh
# The regular files below DIRECTORY, NUL-terminated: `SIZE MTIME RELATIVE-PATH`. A listing
# only: nothing is ever opened by these names (archive.sh walks the tree itself), since the
# container may swap any directory on a path for a symlink once it is listed.
# Argument: DIRECTORY
cd -- "$1" || exit
exec find . -type f -printf '%s %T@ %P\0'
