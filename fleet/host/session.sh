# shellcheck shell=sh
# The job's whole life on one host (see fleet/host/__init__.py), after docker.sh,
# checks.sh and supervise.sh. Arguments, every path from fleet.plan.HostPlan:
#   WORKDIR JOB_PARENT JOB_DIR RUN_FILE INPUTS_DIR MESSAGE IMAGE NAME RUN CONTROLLER
#   NEED_KB GPUS(1|0) NDIRS NFILES NINPUTS
#   then NDIRS directories to make, NFILES (path, content) pairs to write,
#   NINPUTS (partial, final) directory pairs, and the `docker create` argv.
workdir=$1 job_parent=$2 job_dir=$3 run_file=$4 inputs_dir=$5 message=$6 image=$7 name=$8 run=$9
shift 9
controller=$1 need_kb=$2 gpus=$3 ndirs=$4 nfiles=$5 ninputs=$6
shift 6

# fail STATUS WORDS: what a check said (if anything) on stderr, then exit STATUS.
fail() {
  if [ -n "$2" ]; then printf '%s\n' "$2" >&2; fi
  exit "$1"
}

# The job directory first: the controller streams the inputs in (`written`) while docker is
# checked, the image pulled and the container created.
said=$(check_workdir "$workdir") || fail "$?" "$said"
said=$(check_space "$workdir" "$need_kb") || fail "$?" "$said"
mkdir -p -- "$job_parent" || exit 24  # WRITE_FAILED
# The job directory is this run's alone: another job of the same name (another controller,
# or leftovers) is never written into, nor removed.
if ! mkdir -- "$job_dir" 2>/dev/null; then
  owner=$(head -n 1 -- "$run_file" 2>/dev/null)
  if [ "$owner" != "$run" ]; then printf '%s\n' "${owner:-unknown}" >&2; exit 28; fi  # IN_USE
fi
printf '%s\n' "$run" "$controller" > "$run_file" || exit 24  # WRITE_FAILED
# Mount sources are 0777, for any user in the container; -p for their parents (inputs,
# outputs), which nothing in the container writes to.
while [ "$ndirs" -gt 0 ]; do
  # shellcheck disable=SC2174 # -m for the deepest directory only, on purpose (above)
  mkdir -p -m 0777 -- "$1" || exit 24  # WRITE_FAILED
  shift; ndirs=$((ndirs - 1))
done
while [ "$nfiles" -gt 0 ]; do
  printf '%s' "$2" > "$1" || exit 24  # WRITE_FAILED
  shift 2; nfiles=$((nfiles - 1))
done
# shellcheck disable=SC2174 # -p: it may exist already (a mount source's parent)
mkdir -p -m 0777 -- "$inputs_dir" || exit 24  # WRITE_FAILED
printf 'fleet:written\n' >&2

said=$(check_docker) || fail "$?" "$said"
said=$(check_image "$image") || fail "$?" "$said"
if [ "$gpus" = 1 ]; then
  said=$(check_gpus) || fail "$?" "$said"
fi

# docker_create PAIRS... ARGV...: `docker create` with the argv after the input pairs (which
# stay in the script's own arguments, for `go`).
docker_create() {
  shift $((2 * ninputs))
  d "$@"
}
docker_create "$@" >/dev/null || exit 25  # CREATE_FAILED
printf 'fleet:prepared\n' >&2
IFS= read -r go || go=abort
if [ "$go" != go ]; then
  d_bounded rm --force "$name" >/dev/null
  rm -rf -- "$job_dir"; rmdir -- "$job_parent" 2>/dev/null
  exit 0
fi
# Inputs were staged into their partial directories: complete now, they take their final
# names.
while [ "$ninputs" -gt 0 ]; do
  if [ -d "$1" ]; then
    rm -rf -- "$2" || exit 24  # WRITE_FAILED
    mv -- "$1" "$2" || exit 24  # WRITE_FAILED
  fi
  shift 2; ninputs=$((ninputs - 1))
done
d start "$name" >/dev/null || exit 30  # START_FAILED
printf 'fleet:started\n' >&2
supervise "$name" "$job_dir" "$job_parent" "$message" 0
