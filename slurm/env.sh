# shellcheck shell=sh
# Source me (POSIX sh or bash): `. slurm/env.sh`. Exports SLURM_CONF, so that
# the Slurm clients find a cluster whose config is not in /etc/slurm, and the
# facts start.sh recorded (HPCFLOW_SLURM_NODES, HPCFLOW_SLURM_NODE_NAMES,
# HPCFLOW_SLURM_CPUS_PER_NODE, HPCFLOW_SLURM_MEM_PER_NODE_MB,
# HPCFLOW_SLURM_GPUS_PER_NODE, HPCFLOW_SLURM_ACCOUNTING, HPCFLOW_SLURM_PROCTRACK,
# HPCFLOW_SLURM_PARTITION, HPCFLOW_SLURM_MAX_TIME_MIN).
# It does not check that the cluster is up: slurm/status.sh does.
# No `set -e` here: it would change the shell that sources this file.

SLURM_CONF=${HPCFLOW_SLURM_CONF_DIR:-/etc/slurm}/slurm.conf
export SLURM_CONF
if [ -r /run/hpcflow-slurm/cluster.env ]; then
  set -a
  # shellcheck source=/dev/null # written by start.sh
  . /run/hpcflow-slurm/cluster.env
  set +a
fi
