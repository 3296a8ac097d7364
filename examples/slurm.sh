#!/usr/bin/env bash
# Multi-node training under SLURM: one torchrun per node, each starting one process per GPU.
#
#   sbatch examples/slurm.sh                      # 2 nodes × 8 GPUs, the paper's recipe at its global batch of 128
#
# torchrun's c10d rendezvous meets on the first node of the allocation; every process then joins NCCL.
#SBATCH --job-name=alexnet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the per-GPU processes itself
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64           # image decoding: -j workers per process
#SBATCH --time=72:00:00
#SBATCH --signal=TERM@120            # SIGTERM 2 minutes before the limit: the run checkpoints and exits 143
#SBATCH --requeue                    # ... and a requeued job resumes it (--resume auto)
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR=$head_node MASTER_PORT=${MASTER_PORT:-29500}
# Interfaces: without these, NCCL and gloo pick the first one they find, which on many clusters is not the fast
# fabric (or not routable between nodes). Set them to your cluster's names (ip -br addr).
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-ib0}
export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-ib0}
# A restarted worker must not read the previous attempt's addresses from torchrun's shared store
# (pytorch/pytorch#135712).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
export OMP_NUM_THREADS=8

# 16 processes × -b 8 = the paper's global batch of 128 at its learning rate 0.01 (or pass --scale-lr 128 with
# a larger -b: the linear scaling rule).
srun torchrun \
    --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
    --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="$SLURM_JOB_ID" \
    --max-restarts=3 \
    -m alexnet.cli train --recipe paper-imagenet --data-dir /imagenet -b 8 -j 6 \
    --out "runs/$SLURM_JOB_NAME" --resume auto
