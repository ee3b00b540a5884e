#!/usr/bin/env bash
# A sweep on Slurm: one array task per GPU, each a `sweep worker` pulling trials of one study.
#
#   export SWEEP_STORAGE='postgresql+psycopg://sweep:<password>@<host>:5432/sweep'
#   #   (or write the URL to ~/.config/sweep/storage-url, chmod 600: the job reads it from there)
#   export SWEEP_ARTIFACTS=s3://bucket/lr-freeze    # or a folder every node mounts (AWS_* for the endpoint)
#   sweep create lr-freeze                          # once, e.g. on the login node
#   sbatch --array=0-7 deploy/slurm-array.sh lr-freeze
#   squeue --me; tail -f sweep-<job>_<task>.out; sweep status lr-freeze
#
# CPU workers instead (no GPU requested; Slurm's own SBATCH_* variables override the #SBATCH lines):
#   SBATCH_GRES=none SWEEP_DEVICE=cpu sbatch --cpus-per-task=8 --mem=8G --array=0-3 deploy/slurm-array.sh lr-freeze
# SWEEP_DEVICE (default cuda) and SWEEP_THREADS (default: the task's CPUs) set the worker's device and threads.
#
# Run from the repository root (specs in ./studies, data in ./data); SWEEP_VENV=path activates a venv.
#
# Preemption and requeue (scontrol requeue, a preempting partition): Slurm sends SIGTERM, the worker
# finishes its epoch, checkpoints and hands the trial back; the task is queued again and its worker (or
# any other) resumes the trial from that checkpoint. The time limit: --signal=TERM@300 does the same
# five minutes before it, and the task ends. Exit 75 (CUDA context broken) and 69 (database
# unavailable) requeue the task: a new start, maybe on another node. Exit 2: a setting to fix, no requeue.
#SBATCH --job-name=sweep
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=sweep-%A_%a.out
set -euo pipefail

study=${1:-lr-freeze}
device=${SWEEP_DEVICE:-cuda}
threads=${SWEEP_THREADS:-${SLURM_CPUS_PER_TASK:-4}}
readonly EXIT_DEVICE_LOST=75 EXIT_DATABASE_UNAVAILABLE=69

if [ -n "${SWEEP_VENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$SWEEP_VENV/bin/activate"
fi
if [ -z "${SWEEP_STORAGE:-}" ]; then
    url_file=${SWEEP_STORAGE_FILE:-$HOME/.config/sweep/storage-url}
    if [ ! -r "$url_file" ]; then
        echo "slurm-array.sh: set SWEEP_STORAGE or write the URL to $url_file (chmod 600)" >&2
        exit 2
    fi
    SWEEP_STORAGE=$(<"$url_file")
    export SWEEP_STORAGE
fi

# With a GPU, Slurm has already narrowed CUDA_VISIBLE_DEVICES to this task's GPU, so the worker uses the
# one visible device (--device cuda). `--gpu 0` would reset CUDA_VISIBLE_DEVICES=0: on nodes where Slurm
# does not confine devices with cgroups, that is the node's first GPU, shared by every task.
# --signal=TERM@300 reaches job steps only, hence srun; srun takes --cpus-per-task again (Slurm 22.05+
# no longer hands the job's to a step).
# Not exec: the worker's exit code decides below. A requeue or scancel sends SIGTERM to the batch shell
# too: it must outlive the step (the job ends with the shell), so it waits on through the signal.
trap ':' TERM
srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" \
    sweep worker "$study" --device "$device" --threads "$threads" &
step=$!
while :; do
    rc=0
    wait "$step" || rc=$?
    kill -0 "$step" 2>/dev/null || break # still running: the wait was cut short by the signal
done

if [ "$rc" -eq "$EXIT_DEVICE_LOST" ] || [ "$rc" -eq "$EXIT_DATABASE_UNAVAILABLE" ]; then
    echo "slurm-array.sh: the worker exited $rc; requeueing task ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}" >&2
    scontrol requeue "$SLURM_JOB_ID" # ends this run; the task starts again when a node is free
fi
exit "$rc"
