#!/usr/bin/env bash
# Run a lookalike job through the spark-submit that ships with the installed pyspark.
#
#   ./spark-submit.sh <job> [--config FILE] [--set key=value ...] [--master URL] [spark-submit args...]
#
# Jobs: embed, neighbours, pipeline. --config defaults to conf/local.yaml and is shipped with
# --files so that cluster-mode drivers find it too. Anything else is passed to spark-submit
# before the application (e.g. --conf spark.executor.memory=4g, --archives env.tar.gz#environment).
# Returns the job's exit status.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage() { sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }

[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0 ;; esac
job=$1; shift
[ -f "$root/jobs/$job.py" ] || { echo "spark-submit.sh: unknown job '$job' (have: $(cd "$root/jobs" && ls *.py | grep -v '^_' | sed 's/\.py$//' | tr '\n' ' '))" >&2; exit 2; }

config="$root/conf/local.yaml"
master=""
job_args=()
submit_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --config=*) config=${1#--config=}; shift ;;
    --set) job_args+=(--set "$2"); shift 2 ;;
    --set=*) job_args+=(--set "${1#--set=}"); shift ;;
    --master) master=$2; shift 2 ;;
    --master=*) master=${1#--master=}; shift ;;
    --log-level) job_args+=(--log-level "$2"); shift 2 ;;
    *) submit_args+=("$1"); shift ;;
  esac
done
[ -f "$config" ] || { echo "spark-submit.sh: config file not found: $config" >&2; exit 2; }

python=${LOOKALIKE_PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || { echo "spark-submit.sh: $python not found; run 'make setup' first" >&2; exit 2; }
"$root/scripts/check-java.sh"
spark_home=$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')

export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$python}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONUNBUFFERED=1
export SPARK_CONF_DIR=${SPARK_CONF_DIR:-$root/conf/spark}

if [ -n "$master" ]; then
  export LOOKALIKE_MASTER_FROM_SUBMIT=1
  submit_args=(--master "$master" "${submit_args[@]}")
fi
# Local mode runs the executors inside the driver JVM: give it room unless told otherwise.
case " ${submit_args[*]-} " in
  *" --driver-memory "*) ;;
  *) case "${master:-local}" in local*) submit_args=(--driver-memory "${LOOKALIKE_DRIVER_MEMORY:-4g}" "${submit_args[@]}") ;; esac ;;
esac

set +e
"$spark_home/bin/spark-submit" \
  --conf spark.ui.showConsoleProgress=false \
  --files "$config" \
  "${submit_args[@]}" \
  "$root/jobs/$job.py" --config "$config" "${job_args[@]+"${job_args[@]}"}"
status=$?
exit $status
