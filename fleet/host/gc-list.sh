# shellcheck shell=sh
# `fleet gc`: what fleet left on this host, one tab-separated line each, for
# fleet/runtime/leftovers.py: every container with the job label
#   container ID NAME JOB RUN CONTROLLER
# and every WORKDIR/*/algo-* directory (leftovers.parse_leftovers keeps the well-formed)
#   dir PATH RUN CONTROLLER   (from its run file; empty when it has none)
# After docker.sh. Arguments: WORKDIR RUN_FILE_NAME JOB_LABEL RUN_LABEL CONTROLLER_LABEL
workdir=$1 run_file=$2 job_label=$3 run_label=$4 controller_label=$5
d_bounded ps -a --filter "label=$job_label" --format \
  "container\\t{{.ID}}\\t{{.Names}}\\t{{.Label \"$job_label\"}}\\t{{.Label \"$run_label\"}}\\t{{.Label \"$controller_label\"}}" \
  || exit "$DOCKER_FAILED"
for dir in "$workdir"/*/algo-*; do
  [ -d "$dir" ] || continue
  { head -n 2 -- "$dir/$run_file" 2>/dev/null; echo; echo; } | {
    IFS= read -r run; IFS= read -r owner
    printf 'dir\t%s\t%s\t%s\n' "$dir" "$run" "$owner"
  }
done
