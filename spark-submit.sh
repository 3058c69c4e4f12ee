#!/usr/bin/env bash
# Run a lookalike job through the spark-submit that ships with the installed pyspark.
#
#   ./spark-submit.sh <job> [--config FILE] [--set key=value ...] [--master URL] [--env ARCHIVE]
#                           [--dry-run] [spark-submit args...]
#   ./spark-submit.sh --package-env [--output FILE] [--python PYTHON] [--extra REQ ...]
#
# Jobs: embed, neighbours, duplicates, hybrid, pipeline, and envcheck (what Python the executors run). --config
# defaults to conf/local.yaml and is shipped with --files so that cluster-mode drivers find it
# too. --env ARCHIVE runs the executors' Python from a venv-pack archive (built by --package-env,
# see scripts/package-env.sh --help): it is shipped with --archives ARCHIVE#environment and
# executors run ./environment/bin/python. --dry-run (embed): list and plan, print what a run would
# do, write nothing. Anything else is passed to spark-submit before the application (e.g. --conf
# spark.executor.memory=4g).
# Returns the job's exit status.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit "${1:-2}"; }

[ $# -ge 1 ] || usage
case "$1" in
  -h|--help) usage 0 ;;
  --package-env) shift; exec "$root/scripts/package-env.sh" "$@" ;;
esac
job=$1; shift
[ -f "$root/jobs/$job.py" ] || { echo "spark-submit.sh: unknown job '$job' (have: $(cd "$root/jobs" && ls *.py | grep -v '^_' | sed 's/\.py$//' | tr '\n' ' '))" >&2; exit 2; }

config="$root/conf/local.yaml"
master=""
env_archive=""
job_args=()
overrides=()
submit_args=()
while [ $# -gt 0 ]; do
  # An option that takes a value, given as the last word: one line and exit 2 rather than bash's
  # "unbound variable".
  case "$1" in
    --config|--set|--master|--log-level|--env)
      if [ $# -lt 2 ]; then
        case "$1" in
          --config) example=conf/local.yaml ;; --set) example=input.uri=s3://bucket/images/ ;;
          --master) example='local[*]' ;; --log-level) example=INFO ;; *) example=build/lookalike-env.tar.gz ;;
        esac
        echo "spark-submit.sh: $1 needs a value, e.g. $1 $example" >&2
        exit 2
      fi ;;
  esac
  case "$1" in
    --config) config=$2; shift 2 ;;
    --config=*) config=${1#--config=}; shift ;;
    --set) job_args+=(--set "$2"); overrides+=("$2"); shift 2 ;;
    --set=*) job_args+=(--set "${1#--set=}"); overrides+=("${1#--set=}"); shift ;;
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --log-level) job_args+=(--log-level "$2"); shift 2 ;;
    --dry-run) job_args+=(--dry-run); shift ;;
    --env) env_archive=$2; shift 2 ;;
    --env=*) env_archive=${1#--env=}; shift ;;
    *) submit_args+=("$1"); shift ;;
  esac
done
[ ! -d "$config" ] || { echo "spark-submit.sh: config file $config is a directory; give the YAML file, e.g. conf/local.yaml" >&2; exit 2; }
[ -f "$config" ] || { echo "spark-submit.sh: config file not found: $config" >&2; exit 2; }

python=${LOOKALIKE_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || { echo "spark-submit.sh: $python not found; run 'make setup' first" >&2; exit 2; }
"$root/scripts/check-java.sh"
spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')

export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONUNBUFFERED=1
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$root/conf/spark}

# Cluster deploy mode starts the driver on the cluster, where --files puts the config in the
# working directory under its own name.
config_arg=$config
deploy_mode=client
for ((i = 0; i < ${#submit_args[@]}; i++)); do
  case "${submit_args[$i]}" in
    --deploy-mode) deploy_mode=${submit_args[$((i + 1))]:-client} ;;
    --deploy-mode=*) deploy_mode=${submit_args[$i]#--deploy-mode=} ;;
  esac
done
[ "$deploy_mode" = cluster ] && config_arg=$(basename "$config")

if [ -n "$env_archive" ]; then
  case "$env_archive" in
    *://*) ;;  # s3://, hdfs://: fetched by the cluster
    *) [ -f "$env_archive" ] || { echo "spark-submit.sh: --env archive not found: $env_archive (build it with ./spark-submit.sh --package-env)" >&2; exit 2; } ;;
  esac
  # The executors (and a cluster-mode driver) run the archive's interpreter; a client-mode driver
  # runs here, with this checkout's Python. Spark settings rather than PYSPARK_PYTHON so that a
  # cluster's spark-defaults.conf cannot override them.
  driver_python=$python
  [ "$deploy_mode" = cluster ] && driver_python=./environment/bin/python
  submit_args=(--archives "$env_archive#environment" --conf spark.pyspark.python=./environment/bin/python
               --conf "spark.pyspark.driver.python=$driver_python" "${submit_args[@]}")
fi

# spark-submit's master wins over the config's (docs/cluster.md): without --master here, the
# config's spark.master (after --set) becomes spark-submit's --master, unless the config is
# invalid, which the job itself then reports.
if [ -z "$master" ]; then
  master=$("$python" -c 'import sys
from lookalike.config import load_config
try:
    print(load_config(sys.argv[1], sys.argv[2:]).spark.master)
except Exception:
    pass' "$config" "${overrides[@]+"${overrides[@]}"}" 2>/dev/null || true)
fi
if [ -n "$master" ]; then
  submit_args=(--master "$master" "${submit_args[@]}")
fi
# A driver for a master on this machine (local mode, or a cluster on the loopback such as `make
# cluster-up` starts) listens on 127.0.0.1 only. A client-mode driver of a real cluster must be
# reachable by the executors on other hosts: there Spark's own choice (this host's address) stands.
case "${master:-local}" in
  local|local\[*|spark://127.0.0.1:*|spark://localhost:*) export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1} ;;
esac
# Local mode runs the executors inside the driver JVM: give it room unless told otherwise.
case " ${submit_args[*]-} " in
  *" --driver-memory "*) ;;
  *) case "${master:-local}" in local*) submit_args=(--driver-memory "${LOOKALIKE_DRIVER_MEMORY:-4g}" "${submit_args[@]}") ;; esac ;;
esac

# LOOKALIKE_SUBMIT_ECHO=1: print the address the driver binds to and the spark-submit command
# line instead of running it (what a scheduler's wrapper would run, for checking it).
if [ "${LOOKALIKE_SUBMIT_ECHO:-}" = 1 ]; then
  echo "SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-}"
  echo "spark-submit ${submit_args[*]} $root/jobs/$job.py --config $config_arg ${job_args[*]-}"
  exit 0
fi

set +e
"$spark_home/bin/spark-submit" \
  --conf spark.ui.showConsoleProgress=false \
  --files "$config" \
  "${submit_args[@]}" \
  "$root/jobs/$job.py" --config "$config_arg" "${job_args[@]+"${job_args[@]}"}"
status=$?
exit $status
