#!/usr/bin/env bash
# A Spark standalone cluster on this machine, run from the installed pyspark (no downloads): one
# master and N workers, every port bound to 127.0.0.1 (web UIs included). `make cluster-up` and
# `make cluster-down` call this.
#
#   scripts/cluster.sh up|down|status [options]
#
#   --dir DIR           pids, logs and worker directories (default .cluster)
#   --master-port N     master RPC port (default 7077): submit with --master spark://127.0.0.1:N
#   --ui-port N         master web UI (default 8080); worker i's UI is on --worker-ui-port + i - 1
#   --worker-ui-port N  first worker's web UI (default 8081; 0: any free port for each worker)
#   --workers N         number of workers (default 2)
#   --cores N           cores each worker offers (default 1)
#   --memory SIZE       executor memory each worker offers, e.g. 2g (default 2g)
#   --gpus N            GPUs each worker offers (default 0), found by scripts/gpu-discovery.sh;
#                       submit with --config conf/gpu.yaml for one task per GPU
#
# `up` returns once every worker has registered with the master; `down` stops the master, the
# workers and whatever executors and Python workers they started. The Python that executors run is
# chosen per application (spark-submit.sh --env ARCHIVE), not here.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }

[ $# -ge 1 ] || usage
action=$1; shift
dir="$root/.cluster"
master_port=7077
ui_port=8080
worker_ui_port=8081
workers=2
cores=1
memory=2g
gpus=0
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --master-port) master_port=$2; shift 2 ;;
    --ui-port) ui_port=$2; shift 2 ;;
    --worker-ui-port) worker_ui_port=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --cores) cores=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --gpus) gpus=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "cluster.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac

python=${LOOKALIKE_PYTHON:-$root/.venv/bin/python}
master_url="spark://127.0.0.1:$master_port"

# A pid file names a process of ours only while that process is a Spark daemon: after a reboot
# the number may belong to anything.
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'org.apache.spark.deploy'
}

# The master's own view, from its JSON endpoint: how many workers are ALIVE.
alive_workers() {
  "$python" - "$ui_port" <<'PY' 2>/dev/null || echo 0
import json, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/json/", timeout=2) as response:
    state = json.load(response)
print(sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE"))
PY
}

start() {  # name, class, args...
  local name=$1 class=$2; shift 2
  if alive "$dir/$name.pid"; then echo "cluster.sh: $name already running (pid $(cat "$dir/$name.pid"))"; return; fi
  # setsid: each daemon leads its own process group, so that `down` also reaches the executor JVMs
  # and Python workers it started, and a Ctrl-C in this shell does not.
  SPARK_HOME="$spark_home" setsid "$spark_home/bin/spark-class" "$class" "$@" \
    > "$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/$name.pid"
}

stop() {  # name
  local name=$1 pid
  pid=$(cat "$dir/$name.pid" 2>/dev/null) || return 0
  if alive "$dir/$name.pid"; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    echo "cluster.sh: stopped $name (pid $pid)"
  fi
  rm -f "$dir/$name.pid"
}

case "$action" in
  up)
    if [ "$gpus" -gt 0 ] && [ "$workers" -gt 1 ]; then
      # Workers on one host would each claim every GPU: run one, whose executors get a GPU each.
      echo "cluster.sh: --gpus needs --workers 1 (one worker per host; it starts one executor per GPU)" >&2
      exit 2
    fi
    [ -x "$python" ] || { echo "cluster.sh: $python not found; run 'make setup' first" >&2; exit 2; }
    "$root/scripts/check-java.sh"
    spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')
    mkdir -p "$dir/logs" "$dir/work"
    # Loopback only: SPARK_LOCAL_IP is also the address the web UIs bind to.
    export SPARK_LOCAL_IP=127.0.0.1 SPARK_PUBLIC_DNS=127.0.0.1
    export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$root/conf/spark}
    export SPARK_LOG_DIR="$dir/logs" SPARK_PID_DIR="$dir"
    # No REST submission gateway: unauthenticated, and its fixed port 6066 would collide between
    # two clusters on one machine. spark-submit uses the master's RPC port instead.
    export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
    start master org.apache.spark.deploy.master.Master \
      --host 127.0.0.1 --port "$master_port" --webui-port "$ui_port"
    if [ "$gpus" -gt 0 ]; then
      export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.worker.resource.gpu.amount=$gpus -Dspark.worker.resource.gpu.discoveryScript=$root/scripts/gpu-discovery.sh"
    fi
    for i in $(seq 1 "$workers"); do
      mkdir -p "$dir/work/worker-$i"
      start "worker-$i" org.apache.spark.deploy.worker.Worker \
        --host 127.0.0.1 --webui-port $((worker_ui_port == 0 ? 0 : worker_ui_port + i - 1)) \
        --cores "$cores" --memory "$memory" \
        --work-dir "$dir/work/worker-$i" "$master_url"
    done
    for _ in $(seq 1 240); do
      [ "$(alive_workers)" -ge "$workers" ] && break
      for name in master $(seq -f 'worker-%g' 1 "$workers"); do
        alive "$dir/$name.pid" || { echo "cluster.sh: $name exited; its log:" >&2; tail -20 "$dir/logs/$name.log" >&2; "$0" down --dir "$dir" >/dev/null; exit 1; }
      done
      sleep 0.5
    done
    have=$(alive_workers)
    if [ "$have" -lt "$workers" ]; then
      echo "cluster.sh: only $have of $workers workers registered after 120s; logs in $dir/logs" >&2
      "$0" down --dir "$dir" >/dev/null
      exit 1
    fi
    echo "cluster.sh: $master_url up with $workers workers ($cores core(s), $memory each); UI http://127.0.0.1:$ui_port; logs in $dir/logs"
    ;;
  down)
    for pidfile in "$dir"/worker-*.pid; do
      [ -e "$pidfile" ] && stop "$(basename "$pidfile" .pid)"
    done
    stop master
    ;;
  status)
    found=0
    for pidfile in "$dir"/master.pid "$dir"/worker-*.pid; do
      [ -e "$pidfile" ] || continue
      found=1
      name=$(basename "$pidfile" .pid)
      if alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: not running (stale pid file)"; fi
    done
    [ "$found" = 1 ] || { echo "no cluster in $dir"; exit 1; }
    ;;
  *) usage ;;
esac
