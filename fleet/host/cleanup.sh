# shellcheck shell=sh
# Remove the container and (unless kept) the job directory, but only this run's; for hosts
# whose session did not get to clean up itself. Idempotent. After docker.sh.
# Arguments: NAME JOB_DIR JOB_PARENT RUN_FILE RUN_LABEL RUN keep|remove started|unstarted
name=$1 job_dir=$2 job_parent=$3 run_file=$4 run_label=$5 run=$6 keep=$7 started=$8
# silent: docker did not answer in time (124, timeout's status). A container that was started
# may run on: then everything stays, for `fleet gc` (DOCKER_SILENT); one never started runs nothing.
silent() {
  [ "$1" -eq 124 ] && [ "$started" = started ] && exit "$DOCKER_SILENT"
}
owner=$(d_bounded inspect --format "{{index .Config.Labels \"$run_label\"}}" "$name" 2>/dev/null)
silent $?
if [ "$owner" = "$run" ]; then
  d_bounded rm --force "$name" >/dev/null 2>&1
  silent $?
fi
if [ "$keep" != keep ]; then
  if [ -d "$job_dir" ]; then
    [ "$(head -n 1 -- "$run_file" 2>/dev/null)" = "$run" ] || exit 0
    rm -rf -- "$job_dir" || exit 1
  fi
  if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi  # never another user's
fi
exit 0
