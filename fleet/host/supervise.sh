# shellcheck shell=sh
# supervise NAME JOB_DIR JOB_PARENT MESSAGE OFFSET: from the container's start (or a
# resumed session) to its removal. OFFSET bytes of its log were already received by the
# controller: the stream starts after them (head -c reads exactly that many from the pipe),
# so no byte is lost or sent twice. Needs docker.sh; ends the script on a failed wait.
supervise() {
  name=$1 job_dir=$2 job_parent=$3 message=$4 offset=$5
  # `docker wait` starts now (its start-up overlaps the job); dd passes the log through
  # unchanged and counts it (its last words on stderr). The scratch files in the job
  # directory are this process's own: an older session on this host may still be winding
  # down.
  d wait "$name" > "$job_dir/.code.$$" &
  waiter=$!
  d logs --follow "$name" 2>&1 | { head -c "$offset" >/dev/null; dd bs=65536 2> "$job_dir/.logged.$$"; }
  wait "$waiter" || exit "$WAIT_FAILED"
  code=$(cat "$job_dir/.code.$$")
  # `docker logs --follow` can miss the last, unterminated line of a container that exits
  # (seen with Docker 20.10 in half the runs): send what it did not.
  logged=$(sed -n 's/^\([0-9][0-9]*\) bytes.*/\1/p' "$job_dir/.logged.$$" 2>/dev/null)
  rm -f -- "$job_dir/.logged.$$" "$job_dir/.code.$$"
  d logs "$name" 2>&1 | tail -c +$((offset + ${logged:-0} + 1))
  printf 'fleet:exit-code:%s\n' "$code" >&2
  # A regular file only: a symlink planted by the container is never followed.
  if [ -f "$message" ] && [ ! -L "$message" ]; then
    printf 'fleet:message:%s\n' "$(head -c 1024 -- "$message" | wc -c)" >&2
    head -c 1024 -- "$message" >&2
  fi
  printf 'fleet:exited\n' >&2
  IFS= read -r after || exit 0
  d_bounded rm --force "$name" >/dev/null
  if [ "$after" = clean ]; then
    rm -rf -- "$job_dir" && if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  fi
  printf 'fleet:cleaned\n' >&2
}

# step_end: as a Slurm job step (transport srun: FLEET_STEP=1), the session is what Slurm
# signals when the job is cancelled or its time runs out (SIGTERM to every process of the
# step, SIGKILL after KillWait), while the container is dockerd's, out of Slurm's sight. So
# SIGTERM stops the container (SIGINT, then SIGKILL after its --stop-timeout, which the
# controller made fit in KillWait), removes it and the job directory: an allocation that
# ends leaves nothing behind. Uses the caller's name, job_dir and job_parent.
step_end() {
  trap - HUP INT TERM
  d stop "$name" >/dev/null 2>&1
  d_bounded rm --force "$name" >/dev/null 2>&1
  rm -rf -- "$job_dir"; if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  exit "$STEP_ENDED"
}
