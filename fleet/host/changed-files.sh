# shellcheck shell=sh
# The regular files below DIRECTORY, NUL-terminated: `SIZE MTIME RELATIVE-PATH`.
# Argument: DIRECTORY
cd -- "$1" || exit
exec find . -type f -printf '%s %T@ %P\0'
