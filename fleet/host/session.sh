# shellcheck shell=sh
# The job's whole life on one host (see fleet/host/__init__.py), after docker.sh,
# checks.sh, users.sh and supervise.sh. Arguments, every path from fleet.plan.HostPlan:
#   WORKDIR JOB_PARENT JOB_DIR RUN_FILE PRIVATE_DIR ENV_FILE MESSAGE IMAGE_AT NAME
#   RUN CONTROLLER NEED_KB GPUS(1|0) NDIRS NFILES NINPUTS NVARS
#   then NDIRS (mode, directory) pairs to make in PRIVATE_DIR (mode `container`: 0755, then
#   the container's user's, once it is known), NFILES paths to write,
#   NINPUTS (partial, final) directory pairs, NVARS keys, and the `docker create` argv,
#   whose word IMAGE_AT (from 0) the ID of the image the host has for the job replaces.
# Stdin first brings what no other local user may see (argvs are public: /proc/PID/cmdline):
# a line of byte counts, one per file, one for the env file, one per key's value, then
# those bytes; then, once the files are written, how this host gets the image (see below);
# then, as always, go (`go api`: see await_end) / abort and clean / keep. A key's value is
# one docker's env file cannot carry (a newline): it goes to ENV_FILE.i (i from 1) and, from
# there, into the environment of `docker create` alone, whose argv names the key only
# (`--env KEY`).
workdir=$1 job_parent=$2 job_dir=$3 run_file=$4 private_dir=$5 env_file=$6 message=$7 image_at=$8 name=$9
shift 9
run=$1 controller=$2 need_kb=$3 gpus=$4 ndirs=$5 nfiles=$6 ninputs=$7 nvars=$8
shift 8
# Whatever is not given a mode here is the SSH user's alone (the env file: 0600).
umask 077

# fail STATUS WORDS: what a check said (if anything) on stderr, then exit STATUS.
fail() {
  if [ -n "$2" ]; then printf '%s\n' "$2" >&2; fi
  exit "$1"
}

# shared_dir DIR: DIR can be changed by other users (group- or world-writable, not sticky):
# they could rename fleet's directories in it and put their own in their place.
shared_dir() {
  [ -n "$(find "$1" -prune \( -perm -0002 -o -perm -0020 \) ! -perm -1000 2>/dev/null)" ]
}

# The job directory first: the controller streams the inputs in (`written`) while docker is
# checked, the image pulled and the container created.
# The workdir is made when missing (as check_workdir does); its probe is this session's own
# mkdir of WORKDIR/NAME below, whose words say why it fails (a process or three fewer).
if [ ! -d "$workdir" ]; then
  said=$(mkdir -p -- "$workdir" 2>&1) || fail "$WRITE_FAILED" "$said"
fi
said=$(check_space "$workdir" "$need_kb") || fail "$?" "$said"
if shared_dir "$workdir"; then
  fail "$WRITE_FAILED" "the workdir $workdir is writable by other users: make it 0755 (or sticky, as /tmp)"
fi
# WORKDIR/NAME: made here, or made before by this same user and private to it.
if ! said=$(mkdir -m 0755 -- "$job_parent" 2>&1); then
  if [ ! -e "$job_parent" ] && [ ! -L "$job_parent" ]; then fail "$WRITE_FAILED" "$said"; fi
  if [ -L "$job_parent" ] || [ ! -d "$job_parent" ] || [ ! -O "$job_parent" ] || shared_dir "$job_parent"; then
    fail "$WRITE_FAILED" "$job_parent exists and is not a directory of $(id -un) that only it can change"
  fi
fi
# The job directory is this run's alone, made afresh: another job of the same name (another
# controller, or leftovers) is never written into, nor removed.
if ! said=$(mkdir -m 0711 -- "$job_dir" 2>&1); then
  if [ -e "$job_dir" ] || [ -L "$job_dir" ]; then
    owner=$(head -n 1 -- "$run_file" 2>/dev/null)
    if [ "$owner" != "$run" ]; then printf '%s\n' "${owner:-unknown}" >&2; exit "$IN_USE"; fi
    fail "$WRITE_FAILED" "$job_dir exists already"
  fi
  fail "$WRITE_FAILED" "$said"
fi
# Files every user may read are written under umask 022 (no chmod: one process fewer each).
umask 022
printf '%s\n' "$run" "$controller" > "$run_file" || exit "$WRITE_FAILED"
umask 077
said=$(mkdir -m 0700 -- "$private_dir" 2>&1) || fail "$WRITE_FAILED" "$said"
# As a Slurm job step (transport srun), SIGTERM ends the job on this host: see step_end.
if [ "${FLEET_STEP:-}" = 1 ]; then trap step_end TERM; fi

# The files' bytes, from stdin: all at once into one private file (`head -c` may read ahead
# from a pipe; nothing else comes before `written`), then cut into pieces: read from that
# file in order, a piece by one `dd` (one read of exactly its size, which a regular file
# gives in full, and dd reads no further: the next piece starts where it stopped).
IFS=' ' read -r lengths || fail "$WRITE_FAILED" "the job's files did not arrive on stdin"
total=0 count=0
for n in $lengths; do
  case $n in ''|*[!0-9]*) fail "$WRITE_FAILED" "the job's files are announced as '$lengths'" ;; esac
  total=$((total + n)) count=$((count + 1))
done
[ "$count" -eq $((nfiles + 1 + nvars)) ] ||
  fail "$WRITE_FAILED" "$count pieces for $nfiles file(s), the env file and $nvars value(s)"
stash=$private_dir/.stdin
# The pieces end with one newline of the controller's: a stash cut short lacks it (below).
head -c "$((total + 1))" > "$stash" || exit "$WRITE_FAILED"
rest="$lengths "
# take DEST: the next piece of the stash (this shell's stdin meanwhile) into DEST.
take() {
  n=${rest%% *} rest=${rest#* }
  if [ "$n" -eq 0 ]; then : > "$1"; else dd bs="$n" count=1 of="$1" 2>/dev/null; fi
}

# Every directory with a plain mkdir (one per run of the same mode, parents first): one that
# exists already was not made by this session (planted), and is refused, named by mkdir's
# error. Those the container writes are listed (a line each: no path has a newline) for
# give_dirs; so are those of a run, for its mkdir.
given='' batch='' batch_mode=''
make_batch() {
  if [ -n "$batch" ]; then
    # shellcheck disable=SC2086 # on purpose: the list, split on newlines
    said=$(IFS='
'; set -f; mkdir -m "$batch_mode" -- $batch 2>&1) || fail "$WRITE_FAILED" "$said"
  fi
  batch=
}
while [ "$ndirs" -gt 0 ]; do
  mode=$1
  if [ "$mode" = container ]; then mode=0755 given="$given$private_dir/$2
"; fi
  if [ "$mode" != "$batch_mode" ]; then make_batch; batch_mode=$mode; fi
  batch="$batch$private_dir/$2
"
  shift 2; ndirs=$((ndirs - 1))
done
make_batch
{
  umask 022  # the container's user reads them
  while [ "$nfiles" -gt 0 ]; do
    take "$1" || exit "$WRITE_FAILED"
    shift; nfiles=$((nfiles - 1))
  done
  umask 077
  take "$env_file" || exit "$WRITE_FAILED"
  i=1
  while [ "$i" -le "$nvars" ]; do
    take "$env_file.$i" || exit "$WRITE_FAILED"
    i=$((i + 1))
  done
  # Every piece was there in full: the controller's newline follows them (a stash cut short,
  # stdin having ended early, lacks it: its last piece came short), and then nothing.
  if ! IFS= read -r extra; then  # nothing of what came is kept
    rm -rf -- "$private_dir"
    fail "$WRITE_FAILED" "the job's files were cut short on stdin"
  fi
  if [ -n "$extra" ] || IFS= read -r extra || [ -n "$extra" ]; then
    fail "$WRITE_FAILED" "the job's files were not read in full from $stash"
  fi
} < "$stash"
# cli_engine: in `cli`, the engine this login's docker CLI talks to, where the environment
# tells it without asking the CLI: DOCKER_HOST's unix:// socket; else, unless a context may
# name another engine (DOCKER_CONTEXT, a currentContext in its config), the CLI's default
# socket. Where the controller reaches that very socket through the engine's API, it may
# create the container itself (`made`, below): on the engine this docker command would use.
# A docker command whose program is missing tells nothing: it fails here as ever (its scripts
# may have to take over: they need it).
cli_engine() {
  cli=
  # shellcheck disable=SC2154 # docker.sh's: the docker command's words, a line each
  command -v "${docker_words%%"
"*}" >/dev/null 2>&1 || return
  case ${DOCKER_HOST:-} in
    unix://*) cli=$DOCKER_HOST; return ;;
    ?*) return ;;
  esac
  [ -z "${DOCKER_CONTEXT:-}" ] || return
  config=${DOCKER_CONFIG:-${HOME:-/nonexistent}/.docker}/config.json
  if [ -e "$config" ]; then
    [ -f "$config" ] && [ -r "$config" ] || return
    while IFS= read -r line || [ -n "$line" ]; do
      case $line in *currentContext*) return ;; esac
    done < "$config"
  fi
  cli=unix:///var/run/docker.sock
}
cli_engine
if [ -n "$cli" ]; then printf 'fleet:written cli=%s\n' "$cli" >&2; else printf 'fleet:written\n' >&2; fi

# The image, as the controller says once the files are written (it may first push it here):
#   use ID 0    the host has it (present, or just pushed): ID, an engine's ID or a config
#               digest (config_image: found through fleet's tag on the containerd store)
#   try NAME 0  present beats pull: the host's image NAME if it has one; else
#               `fleet:image-missing` on stderr, and the next line says: pull (or abort)
#   made ID UID the controller created the container itself, through the engine's API, from
#               the image ID; the container runs as UID (`-`: a user name, looked up here)
#   pull REF N  REF (NAME@DIGEST when the controller pinned it) unless the host has it, with
#               the N bytes that follow: a Docker client config holding the registry's
#               credentials (ECR's token, the controller's docker login), for this pull only:
#               in a directory only this user reads, removed as soon as the pull ends.
# check_image's first docker call is the check that docker answers (time-bounded; its
# statuses are check_docker's): one docker round trip fewer per host than check_docker
# first (fleet check runs check_docker too, to show the server's version).
IFS=' ' read -r verb ref n || verb=abort
image=
if [ "$verb:$n" = try:0 ]; then
  image=$(image_id "$ref")
  status=$?
  case $status in
    0) verb=use ;;
    1)
      image=
      printf 'fleet:image-missing\n' >&2
      IFS=' ' read -r verb ref n || verb=abort
      if [ "$verb" != pull ]; then verb=abort; fi ;;
    *) fail "$status" "$image" ;;
  esac
fi
case $verb:$n in
  use:0 | pull:0 | made:- | made:[0-9]*) auth_dir= ;;
  pull:*[!0-9]* | pull:) fail "$PULL_FAILED" "the controller's pull was announced as '$n' bytes" ;;
  pull:*)
    auth_dir=$private_dir/.docker
    # A signal (the connection gone, a stop) first removes the credentials, then kills.
    forget_credentials() {
      rm -rf -- "$auth_dir"
      if [ "${FLEET_STEP:-}" = 1 ] && [ "$1" = TERM ]; then step_end; fi
      trap - HUP INT TERM; kill -s "$1" "$$"
    }
    trap 'forget_credentials HUP' HUP
    trap 'forget_credentials INT' INT
    trap 'forget_credentials TERM' TERM
    mkdir -m 0700 -- "$auth_dir" || fail "$WRITE_FAILED" "cannot make $auth_dir"
    head -c "$n" > "$auth_dir/config.json" || { rm -rf -- "$auth_dir"; exit "$WRITE_FAILED"; }
    ;;
  *)  # abort (or the controller gone): nothing was created yet
    rm -rf -- "$job_dir"; if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
    exit 0 ;;
esac
if [ "$verb" = made ]; then
  image=$ref how=present
elif [ "$verb" = use ]; then
  if [ -z "$image" ]; then
    image=$(config_image "$ref")
    status=$?
    if [ "$status" -eq 1 ]; then fail "$PULL_FAILED" "the image $ref is not on this host"; fi
    [ "$status" -eq 0 ] || fail "$status" "$image"
  fi
  how=present
else
  said=$(check_image "$ref" "$auth_dir")
  status=$?
  if [ -n "$auth_dir" ]; then
    rm -rf -- "$auth_dir"; trap - HUP INT TERM
    if [ "${FLEET_STEP:-}" = 1 ]; then trap step_end TERM; fi
  fi
  [ "$status" -eq 0 ] || fail "$status" "$said"
  image=${said#* } how=${said%% *}
fi
printf 'fleet:image %s %s\n' "$image" "$how" >&2
if [ "$gpus" = 1 ]; then
  said=$(check_gpus) || fail "$?" "$said"
fi

# docker_create PAIRS... KEYS... ARGV...: `docker create` with the argv after the input pairs
# (which stay in the script's own arguments, for `go`) and the keys, its word IMAGE_AT
# replaced by the image's ID; in its own process (a subshell), each key set to its value
# (ENV_FILE.i, byte for byte: `printf x` keeps the newlines that end it) and exported, for
# that docker alone.
docker_create() (
  shift $((2 * ninputs))
  i=1
  while [ "$i" -le "$nvars" ]; do
    case $1 in ''|[!A-Za-z_]*|*[!A-Za-z0-9_]*) printf '%s is not a variable name\n' "$1" >&2; exit "$CREATE_FAILED" ;; esac
    value=$(cat -- "$env_file.$i" && printf x) || exit "$CREATE_FAILED"
    export "$1=${value%x}"
    shift; i=$((i + 1))
  done
  i=0 count=$#
  while [ "$i" -lt "$count" ]; do
    word=$1
    shift
    if [ "$i" -eq "$image_at" ]; then set -- "$@" "$image"; else set -- "$@" "$word"; fi
    i=$((i + 1))
  done
  d "$@"
)
# forget_environment: the env file, the values' files and the stash they came from go.
forget_environment() {
  rm -f -- "$env_file" "$stash"
  i=1
  while [ "$i" -le "$nvars" ]; do rm -f -- "$env_file.$i"; i=$((i + 1)); done
}
# Docker keeps the environment in the container's config: the files go at once.
if [ "$verb" = made ]; then
  forget_environment
  uid=$n status=0
  case $uid in
    *[!0-9]*) uid=$(container_uid "$name" "$private_dir/.passwd"); status=$? ;;
  esac
else
  if ! docker_create "$@" >/dev/null; then forget_environment; exit "$CREATE_FAILED"; fi
  forget_environment
  # The directories the container writes become its user's (see users.sh); the container is
  # removed when that fails, as on abort.
  uid=$(container_uid "$name" "$private_dir/.passwd")
  status=$?
fi
if [ "$status" -eq 0 ] && [ -n "$uid" ] && [ "$uid" != 0 ] && [ -n "$given" ]; then
  # shellcheck disable=SC2086 # on purpose: the list, split on newlines
  uid=$(IFS='
'; set -f; give_dirs "$uid" $given)
  status=$?
fi
if [ "$status" -ne 0 ]; then d_bounded rm --force "$name" >/dev/null; fail "$status" "$uid"; fi
# In a subshell: a controller gone meanwhile closed this stderr, and the write's SIGPIPE
# ends the subshell alone; this shell goes on to read no go and remove what it made.
(printf 'fleet:prepared\n' >&2)
IFS=' ' read -r go supervisor || go=abort
if [ "$go" != go ]; then
  d_bounded rm --force "$name" >/dev/null
  rm -rf -- "$job_dir"; if [ -O "$job_parent" ]; then rmdir -- "$job_parent" 2>/dev/null; fi
  exit 0
fi
# Inputs were staged into their partial directories: complete now, they take their final
# names.
while [ "$ninputs" -gt 0 ]; do
  if [ -d "$1" ]; then
    rm -rf -- "$2" || exit "$WRITE_FAILED"
    mv -- "$1" "$2" || exit "$WRITE_FAILED"
  fi
  shift 2; ninputs=$((ninputs - 1))
done
# `go api`: the controller starts the container and follows it through the engine's API
# (await_end), once the inputs are in place (`placed`); `go`: this session does (supervise).
if [ "$supervisor" = api ]; then
  printf 'fleet:placed\n' >&2
  await_end "$name" "$job_dir" "$job_parent" "$message"
else
  d start "$name" >/dev/null || exit "$START_FAILED"
  printf 'fleet:started\n' >&2
  supervise "$name" "$job_dir" "$job_parent" "$message" 0
fi
