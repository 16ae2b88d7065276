#!/usr/bin/env bash
# Bring up a single-node SLURM cluster on this machine (Debian 12, run as root) for CI.
#
# Why: the SLURM test (tests/test_slurm.py) runs the whole smoke config through profiles/slurm with the
# Snakemake SLURM executor plugin, so every job really goes through sbatch, slurmctld and slurmd.
#
# What it does (idempotent: a second call finds everything up and returns at once):
#   1. apt-get install slurm-wlm munge (skipped when already installed);
#   2. munged as the 'munge' user with a fresh key (kept when munged already runs);
#   3. /etc/slurm/slurm.conf for one node: this host, its CPUs, RealMemory under the machine's,
#      proctrack/linuxproc, task/none, select/cons_tres, no accounting, SlurmUser=root, a long MinJobAge so
#      that 'squeue' still reports finished jobs to the executor plugin (there is no sacct without
#      accounting), and placeholder GPU GRES (null character devices under /run/taskprune-slurm) so that
#      the 'gpu' requests of profiles/slurm are scheduled as on a GPU cluster (jobs then run on CPU with
#      device: auto);
#   4. slurmctld and slurmd, then waits until 'sinfo' shows the node idle.
#
# Environment:
#   TASKPRUNE_SLURM_GPUS  placeholder GPUs the node advertises (default 4; 0 = none)
#   TASKPRUNE_SLURM_PARTITION  partition name (default 'ci')
# Tear down with .ci/slurm-down.sh.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "slurm-up: must run as root" >&2
  exit 1
fi

GPUS=${TASKPRUNE_SLURM_GPUS:-4}
PARTITION=${TASKPRUNE_SLURM_PARTITION:-ci}
NODE=$(hostname -s)
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
t0=$SECONDS

log() { echo "slurm-up: $*" >&2; }

pid_alive() {  # pid_alive FILE NAME: the process named in FILE runs and is NAME
  local file=$1 name=$2 pid
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]
}

# ------------------------------------------------------------------------------------------ packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d 101 keeps the packages' maintainer scripts from starting daemons we did not configure
  # (an existing policy-rc.d, as in container images, is left alone)
  own_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
  if ((own_policy)); then rm -f /usr/sbin/policy-rc.d; fi
  log "installed in $((SECONDS - t0)) s"
fi

# ------------------------------------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if ! pid_alive /run/munge/munged.pid munged; then
  log "starting munged with a fresh key"
  rm -f /etc/munge/munge.key
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- /usr/sbin/munged --force
fi
for _ in $(seq 50); do
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
  sleep 0.2
done
munge -n | unmunge >/dev/null || { log "munge does not work"; exit 1; }

# -------------------------------------------------------------------------------------- slurm.conf
CPUS=$(nproc)
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
# Leave the OS 10 % (at least 512 MB): slurmd refuses a node whose RealMemory exceeds what it sees.
REAL_MB=$((MEM_MB - (MEM_MB / 10 > 512 ? MEM_MB / 10 : 512)))
GRES_NODE=""
GRES_TYPES=""
if ((GPUS > 0)); then
  GRES_NODE=" Gres=gpu:${GPUS}"
  GRES_TYPES="GresTypes=gpu"
fi
install -d -m 0755 "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
conf=$(
  cat <<EOF
# Written by taskprune .ci/slurm-up.sh: a single-node CI cluster without accounting (addresses are
# loopback, so the host name need not resolve).
ClusterName=taskprune-ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to 'squeue' for an hour: the executor plugin polls job states with squeue.
MinJobAge=3600
ReturnToService=2
SlurmdTimeout=300
DefMemPerCPU=1000
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
${GRES_TYPES}
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${REAL_MB}${GRES_NODE} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
EOF
)
gres_conf=""
if ((GPUS > 0)); then
  # Placeholder GPUs: slurmd drops file-less GPUs, so each one is a null character device (like /dev/null)
  # under /run; the scheduler counts and allocates them, jobs run on CPU.
  install -d -m 0755 /run/taskprune-slurm
  for ((i = 0; i < GPUS; i++)); do
    dev=/run/taskprune-slurm/gpu$i
    [[ -c $dev ]] || mknod -m 0666 "$dev" c 1 3 2>/dev/null || touch "$dev"
  done
  gres_conf="NodeName=${NODE} Name=gpu File=/run/taskprune-slurm/gpu[0-$((GPUS - 1))]"
fi

changed=0
if [[ ! -f $CONF_DIR/slurm.conf ]] || [[ $(<"$CONF_DIR/slurm.conf") != "$conf" ]]; then
  printf '%s\n' "$conf" >"$CONF_DIR/slurm.conf"
  changed=1
fi
if [[ ! -f $CONF_DIR/gres.conf ]] || [[ $(<"$CONF_DIR/gres.conf") != "$gres_conf" ]]; then
  printf '%s\n' "$gres_conf" >"$CONF_DIR/gres.conf"
  changed=1
fi
if ((changed)); then
  log "wrote $CONF_DIR/slurm.conf (node $NODE: $CPUS CPUs, RealMemory $REAL_MB MB, $GPUS placeholder GPUs)"
  # a new configuration needs fresh daemons
  "$(dirname "$0")/slurm-down.sh" --keep-munge
fi

# ---------------------------------------------------------------------------------------- daemons
if ! pid_alive /run/slurmctld.pid slurmctld; then
  log "starting slurmctld"
  slurmctld -c   # -c: start clean, without the jobs and node states of an earlier run
fi
if ! pid_alive /run/slurmd.pid slurmd; then
  log "starting slurmd"
  slurmd
fi

state=""
for _ in $(seq 120); do
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1 || true)
  case $state in
    idle | mixed | allocated) break ;;
    down* | drain* | drained*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 0.5
done
if [[ ! $state =~ ^(idle|mixed|allocated)$ ]]; then
  log "node $NODE did not become idle (state '${state:-unknown}'); see $LOG_DIR/slurmctld.log and slurmd.log"
  exit 1
fi
log "up in $((SECONDS - t0)) s: partition $PARTITION, node $NODE $state"
sinfo
