# shellcheck shell=sh
# An output directory as a tar stream on stdout, never following a symlink.
# Arguments: DIRECTORY all|listed. `listed`: only the NUL-separated relative names on stdin.
cd -- "$1" || exit
if [ "$2" = listed ]; then
  exec tar -c -f - --hard-dereference --no-recursion --null --verbatim-files-from -T -
fi
exec tar -c -f - --hard-dereference .
