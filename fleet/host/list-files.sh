# shellcheck shell=sh
# Every entry below DIRECTORY but directories, NUL-terminated: `TYPE SIZE RELATIVE-PATH`
# (TYPE: find's letter, f for a regular file, l for a symlink, ...). find never follows a
# symlink here (no -L): one is listed as `l`, never walked into.
# Argument: DIRECTORY
cd -- "$1" || exit
exec find . ! -type d -printf '%y %s %P\0'
