#!/usr/bin/env bash
# Tear down the single-node CI cluster of .ci/slurm-up.sh: cancel its jobs, stop slurmd, slurmctld and
# munged (each by the pid in its pid file, never by name). The packages and /etc/slurm stay installed, so
# slurm-up.sh brings the cluster back in seconds. Idempotent. --keep-munge leaves munged running.
set -euo pipefail

keep_munge=0
if [[ ${1:-} == --keep-munge ]]; then keep_munge=1; fi

log() { echo "slurm-down: $*" >&2; }

stop() {  # stop PIDFILE NAME: TERM the process named in PIDFILE if it is NAME, wait, then KILL
  local file=$1 name=$2 pid
  [[ -s $file ]] || return 0
  pid=$(<"$file")
  if [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
    log "stopping $name ($pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      [[ -d /proc/$pid ]] || break
      sleep 0.2
    done
    [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

if command -v scancel >/dev/null && [[ -s /run/slurmctld.pid ]]; then
  scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
fi
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
if ((!keep_munge)); then
  stop /run/munge/munged.pid munged
fi
exit 0
