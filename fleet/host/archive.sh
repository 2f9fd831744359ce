# shellcheck shell=sh
# An output directory as a tar stream on stdout, from tar's own walk of the tree only: GNU tar
# opens each entry relative to its parent directory, never through a symlink (O_NOFOLLOW), so
# an entry swapped for a symlink while tar runs is archived as that symlink, or fails to open.
# No name is ever given to tar to open: a listed `a/b` would be opened through `a`, which the
# container can have swapped for a symlink to a host directory since.
# Arguments: DIRECTORY all|except. `except`: stdin holds `./RELATIVE-PATH` lines that tar leaves
# out of its walk (matched whole, no wildcards); the controller decides what it uploads anyway.
cd -- "$1" || exit
if [ "$2" = except ]; then
  exec tar -c -f - --hard-dereference --no-wildcards --anchored -X - .
fi
exec tar -c -f - --hard-dereference .
