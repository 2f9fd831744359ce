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
  # As a Slurm step, the step's SIGTERM reaches every process of it: dd ignores it, so that
  # the stream's count survives the follower's end and step_end sends the rest.
  streamed=$job_dir/.logged.$$
  d_log logs --follow "$name" 2>/dev/null | {
    if [ "${FLEET_STEP:-}" = 1 ]; then trap '' TERM; fi
    head -c "$offset" >/dev/null; dd bs=65536 2> "$streamed"
  }
  if ! wait "$waiter"; then
    # As a Slurm step, the step's SIGTERM reaches its processes one at a time, in an order
    # of Slurm's (children may come first): `docker wait` can be ended, and this shell exit,
    # before its own SIGTERM runs step_end (about 1 scancel in 4 left a container running).
    # A step whose waiter was cut ends as on that SIGTERM.
    if [ "${FLEET_STEP:-}" = 1 ]; then step_end; fi
    exit "$WAIT_FAILED"
  fi
  code=$(cat "$job_dir/.code.$$")
  rm -f -- "$job_dir/.code.$$"
  # `docker logs --follow` can miss the last, unterminated line of a container that exits
  # (seen with Docker 20.10 in half the runs): send what it did not.
  send_unstreamed
  printf 'fleet:exit-code:%s\n' "$code" >&2
  tell_message "$message"
  printf 'fleet:exited\n' >&2
  IFS= read -r after || exit 0
  d_bounded rm --force "$name" >/dev/null
  if [ "$after" = clean ]; then
    rm -rf -- "$job_dir" && if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  fi
  printf 'fleet:cleaned\n' >&2
}

# tell_message MESSAGE: the first 1 KB of the container's /opt/ml/output/message, if any, on
# stderr after its count. A regular file only: a symlink planted by the container is never
# followed.
tell_message() {
  if [ -f "$1" ] && [ ! -L "$1" ]; then
    printf 'fleet:message:%s\n' "$(head -c 1024 -- "$1" | wc -c)" >&2
    head -c 1024 -- "$1" >&2
  fi
}

# await_end NAME JOB_DIR JOB_PARENT MESSAGE: supervision by the controller, which follows the
# container through the engine's API (its log, its exit code: fleet/runtime/instance.py) and
# says `ended` once it has both: then the message and `exited`, as supervise's; then `clean`
# or `keep`, followed by ` removed` when the controller removed the container itself (else
# it is removed here). EOF at any point leaves everything in place, for a controller that
# comes back.
await_end() {
  name=$1 job_dir=$2 job_parent=$3 message=$4
  IFS= read -r ended || exit 0
  [ "$ended" = ended ] || exit 0
  tell_message "$message"
  printf 'fleet:exited\n' >&2
  IFS=' ' read -r after removed || exit 0
  if [ "$removed" != removed ]; then d_bounded rm --force "$name" >/dev/null; fi
  if [ "$after" = clean ]; then
    rm -rf -- "$job_dir" && if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  fi
  printf 'fleet:cleaned\n' >&2
}

# send_unstreamed: the log's bytes after OFFSET that the stream (`docker logs --follow`, cut
# short or ended) did not send, by dd's count in $streamed; once (streamed is emptied). A
# missing count sends nothing: a byte twice is worse than the stream's own end.
send_unstreamed() {
  [ -n "${streamed:-}" ] || return 0
  logged=$(sed -n 's/^\([0-9][0-9]*\) bytes.*/\1/p' "$streamed" 2>/dev/null)
  rm -f -- "$streamed"
  streamed=
  [ -n "$logged" ] || return 0
  d_log logs "$name" 2>/dev/null | tail -c +$((offset + logged + 1))
}

# step_end: as a Slurm job step (transport srun: FLEET_STEP=1), the session is what Slurm
# signals when the job is cancelled or its time runs out (SIGTERM to every process of the
# step, SIGKILL after KillWait), while the container is dockerd's, out of Slurm's sight. So
# SIGTERM stops the container (SIGINT, then SIGKILL after its --stop-timeout, which the
# controller made fit in KillWait), sends what the container wrote that the stream did not
# (its last words, the trap's "saving checkpoint": srun still relays them), removes it and
# the job directory: an allocation that ends leaves nothing behind. A second SIGTERM must not
# cut that short: TERM stays ignored (only KillWait's SIGKILL ends it). Uses the caller's
# name, job_dir, job_parent (and offset, streamed: supervise's).
step_end() {
  trap - HUP INT
  trap '' TERM
  d stop "$name" >/dev/null 2>&1
  send_unstreamed
  d_bounded rm --force "$name" >/dev/null 2>&1
  rm -rf -- "$job_dir"; if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  exit "$STEP_ENDED"
}
