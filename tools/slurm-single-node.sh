#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (for tests and demos).
#
#   bash tools/slurm-single-node.sh [start|stop|status]
#
# Needs root and Debian's packages: slurm-wlm slurmdbd munge mariadb-server
# (apt-get install -y slurm-wlm slurmdbd munge mariadb-server). It writes
# /etc/slurm/slurm.conf and slurmdbd.conf for one node (this host, all its CPUs),
# starts munged, MariaDB, slurmdbd (job accounting: Pydra's SLURM worker reads job
# states with sacct), slurmctld and slurmd, registers the cluster and waits until
# the node is idle. Idempotent: a running daemon is left as it is.
set -euo pipefail
cmd=${1:-start}
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
state=/var/spool/slurmctld
running() { pgrep -x "$1" >/dev/null; }

if [ "$cmd" = stop ]; then
  for d in slurmd slurmctld slurmdbd; do pkill -x "$d" || true; done
  exit 0
fi
if [ "$cmd" = status ]; then
  sinfo -h -o "%N %T %c" && exit 0 || exit 1
fi
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for exe in munged slurmctld slurmd slurmdbd mariadbd sacctmgr; do
  command -v "$exe" >/dev/null || { echo "$exe not found: apt-get install -y slurm-wlm slurmdbd munge mariadb-server" >&2; exit 2; }
done

# munge: a key and the daemon
if [ ! -s /etc/munge/munge.key ]; then
  (command -v mungekey >/dev/null && mungekey --create --force) \
    || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
running munged || runuser -u munge -- munged --force

# MariaDB with the accounting database
if ! running mariadbd; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  (mysqld_safe --user=mysql >/dev/null 2>&1 &)
  for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
fi
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'phys-bids-slurm';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mkdir -p /etc/slurm "$state" /var/spool/slurmd /var/log/slurm /run/slurm
chown slurm:slurm "$state" /var/log/slurm /run/slurm
cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=phys-bids-slurm
StorageLoc=slurm_acct_db
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurm/slurmdbd.pid
CONF
chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 600 /etc/slurm/slurmdbd.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=physbids
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$state
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP DefMemPerCPU=2048
CONF
running slurmdbd || slurmdbd
for _ in $(seq 30); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -n list cluster format=cluster | grep -qw physbids || sacctmgr -i add cluster physbids >/dev/null
running slurmctld || slurmctld
running slurmd || slurmd
for _ in $(seq 60); do
  st=$(sinfo -h -o "%T" 2>/dev/null || true)
  [ "$st" = idle ] && { echo "slurm ready: node $host, $cpus CPUs, ${mem} MB, partition main"; exit 0; }
  [ "$st" = down ] || [ "$st" = "down*" ] && scontrol update nodename="$host" state=resume 2>/dev/null || true
  sleep 1
done
echo "slurm did not become ready: see /var/log/slurm/*.log" >&2
exit 1
