#!/bin/bash
# A Slurm batch script running a fleet job on the allocation's nodes, requeued by Slurm only
# when fleet's machinery failed (exit 75: a node lost or unreachable, docker down or hung, a
# pull failed, a disk full), never when the job's own code failed (exit 1).
#
# slurm.conf:  RequeueExit=75      (and JobRequeue=1, or sbatch --requeue as below)
#
#   sbatch configs/sbatch-requeue.sh job.json
#
#SBATCH --nodes=3
#SBATCH --requeue
#SBATCH --open-mode=append
set -u
# A job name is used once per FLEET_HOME (a second run of it is refused, exit 2): each
# requeue of the Slurm job runs it under a name of its own.
exec fleet run --inventory slurm --name "${FLEET_JOB_NAME:-job}-${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}" "$1"
