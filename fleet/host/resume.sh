# shellcheck shell=sh
# A new session for a container already started (after a lost connection, or by
# `fleet attach`): the container must be this run's. After docker.sh and supervise.sh.
# Arguments: NAME JOB_DIR JOB_PARENT MESSAGE RUN_LABEL RUN OFFSET SUPERVISOR (api: the
# controller follows the container through the engine's API, see await_end; script: this
# session does, from byte OFFSET of the log)
name=$1 job_dir=$2 job_parent=$3 message=$4 run_label=$5 run=$6 offset=$7 supervisor=$8
if ! state=$(d_bounded inspect --format "{{index .Config.Labels \"$run_label\"}} {{.State.Status}}" "$name" 2>&1)
then
  printf '%s\n' "$state" >&2
  exit "$GONE"
fi
case $state in
  "$run created") exit "$NOT_STARTED" ;;
  "$run "*) ;;
  *) printf '%s\n' "the container $name is not this job run's" >&2; exit "$GONE" ;;
esac
if [ "${FLEET_STEP:-}" = 1 ]; then trap step_end TERM; fi
printf 'fleet:started\n' >&2
if [ "$supervisor" = api ]; then
  await_end "$name" "$job_dir" "$job_parent" "$message"
else
  supervise "$name" "$job_dir" "$job_parent" "$message" "$offset"
fi
