# shellcheck shell=sh
# Remove the container and (unless kept) the job directory, but only this run's; for hosts
# whose session did not get to clean up itself. Idempotent. After docker.sh.
# Arguments: NAME JOB_DIR JOB_PARENT RUN_FILE RUN_LABEL RUN keep|remove
name=$1 job_dir=$2 job_parent=$3 run_file=$4 run_label=$5 run=$6 keep=$7
owner=$(d_bounded inspect --format "{{index .Config.Labels \"$run_label\"}}" "$name" 2>/dev/null)
# 124: docker did not answer in time. The container may run on: everything stays, for `fleet gc`.
if [ $? -eq 124 ]; then exit 3; fi
if [ "$owner" = "$run" ]; then
  d_bounded rm --force "$name" >/dev/null 2>&1
  if [ $? -eq 124 ]; then exit 3; fi
fi
if [ "$keep" != keep ]; then
  if [ -d "$job_dir" ]; then
    [ "$(head -n 1 -- "$run_file" 2>/dev/null)" = "$run" ] || exit 0
    rm -rf -- "$job_dir" || exit 1
  fi
  rmdir -- "$job_parent" 2>/dev/null
fi
exit 0
