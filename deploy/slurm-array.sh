#!/usr/bin/env bash
# A sweep on Slurm: one array task per GPU, each a `sweep worker` pulling trials of one study.
#
#   export SWEEP_STORAGE='postgresql+psycopg://sweep:<password>@<host>:5432/sweep'
#   #   (or write the URL to ~/.config/sweep/storage-url, chmod 600: the job reads it from there)
#   sweep create lr-freeze                          # once, e.g. on the login node
#   sbatch --array=0-7 deploy/slurm-array.sh lr-freeze
#
# Run from the repository root (specs in ./studies, data in ./data); SWEEP_VENV=path activates a venv.
#SBATCH --job-name=sweep
#SBATCH --array=0-3
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --output=sweep-%A_%a.out
set -euo pipefail

study=${1:-lr-freeze}

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

# Slurm has already narrowed CUDA_VISIBLE_DEVICES to this task's GPU, so the worker uses the one
# visible device (--device cuda). `--gpu 0` would reset CUDA_VISIBLE_DEVICES=0: on nodes where Slurm
# does not confine devices with cgroups, that is the node's first GPU, shared by every task.
# --signal=TERM@300 reaches the srun step before the time limit: the worker finishes its epoch
# and hands the trial back to the queue.
# Exit code 69 (EX_UNAVAILABLE): the database stayed unreachable for SWEEP_DB_PATIENCE (default
# 10 min). Not the worker's fault: it is started again after a backoff (10 s doubling up to 5 min)
# instead of ending the task; its trial is resumed from its checkpoint.
delay=10
while true; do
    set +e
    srun --kill-on-bad-exit=1 sweep worker "$study" --device cuda --threads "${SLURM_CPUS_PER_TASK:-4}"
    rc=$?
    set -e
    [ "$rc" -eq 69 ] || exit "$rc"
    echo "slurm-array.sh: the database stayed unreachable; starting the worker again in ${delay} s" >&2
    sleep "$delay"
    delay=$((delay < 150 ? delay * 2 : 300))
done
