#!/usr/bin/env bash
# Build the Python environment that cluster executors run: a fresh virtualenv holding the project
# wheel and its pinned dependencies (constraints.txt), packed with venv-pack. What
# `./spark-submit.sh --package-env` runs; submit with `./spark-submit.sh <job> --env ARCHIVE`.
#
#   scripts/package-env.sh [--output FILE] [--python PYTHON] [--constraints FILE]
#                          [--extra REQUIREMENT ...] [--compress-level 0-9] [--work DIR]
#
#   --output          the archive (default build/lookalike-env.tar.gz)
#   --python          interpreter the environment is made from (default: the one behind .venv, else
#                     python3). Executors need this same interpreter at the same path: build on the
#                     cluster's image (EMR 7: /usr/bin/python3.11, see docs/cluster.md, "Amazon EMR").
#   --constraints     pins for the dependencies (default constraints.txt; constraints-compat.txt
#                     for Spark 3.5 clusters such as EMR 7.x)
#   --extra           more packages for the environment, e.g. --extra 'jax[cuda12]' for GPU executors
#   --compress-level  gzip level of the archive (default 4; 1 is much faster and ~10% bigger;
#                     0 stores without compressing: 6 s to pack instead of 33, 3x bigger). The
#                     archive is always a .tar.gz: Spark unpacks a plain .tar with its own untar,
#                     which refuses the virtualenv's links (bin/python)
#   --work            where the virtualenv is kept between builds (default build/package-env)
#
# The virtualenv is rebuilt only when the constraints, setup.py, the interpreter or the extras
# change; the archive only when, in addition, the sources under lib/ change. pyspark and py4j are
# left out on purpose: every Spark Python worker imports the cluster's own pyspark.zip (it is put
# on PYTHONPATH by Spark and must match the cluster's JVM side), so a copy in the archive would be
# 500 MB of dead weight at best and a version mix at worst. Nor do the C/C++ headers that
# packages ship for building extensions against them (EXCLUDED): TensorFlow's alone are 11,000
# of the environment's 34,000 files, and every executor of every application unpacks the archive.
set -euo pipefail

EXCLUDED=(
  "lib/python*/site-packages/tensorflow/include/*"
  "lib/python*/site-packages/pyarrow/include/*"
  "lib/python*/site-packages/openvino/include/*"
)

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
output="$root/build/lookalike-env.tar.gz"
work="$root/build/package-env"
python=""
level=4
constraints="$root/constraints.txt"
extras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --output) output=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --constraints) constraints=$2; shift 2 ;;
    --extra) extras+=("$2"); shift 2 ;;
    --compress-level) level=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "package-env: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$output" in /*) ;; *) output="$PWD/$output" ;; esac
case "$output" in
  *.tar.gz|*.tgz) ;;
  *) echo "package-env: --output $output must end in .tar.gz: Spark unpacks only a gzipped tar with links intact (for no compression, add --compress-level 0)" >&2; exit 2 ;;
esac
case "$level" in [0-9]) ;; *) echo "package-env: --compress-level must be 0-9, got '$level'" >&2; exit 2 ;; esac
case "$work" in /*) ;; *) work="$PWD/$work" ;; esac
case "$constraints" in /*) ;; *) constraints="$PWD/$constraints" ;; esac
[ -f "$constraints" ] || { echo "package-env: constraints file not found: $constraints" >&2; exit 2; }

if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then
    python=$("$root/.venv/bin/python" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')
  else
    python=$(command -v python3 || true)
  fi
fi
[ -n "$python" ] && [ -x "$python" ] || { echo "package-env: no Python interpreter found (pass --python)" >&2; exit 2; }
python=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "lookalike needs Python 3.10+, found " + sys.version.split()[0])'

hash_of() { "$python" -c 'import hashlib, sys; h = hashlib.sha256(); [h.update(open(p, "rb").read()) for p in sys.argv[1:]]; print(h.hexdigest()[:16])' "$@"; }
# A short hash of the arguments, one per line.
hash_lines() { printf '%s\n' "$@" | "$python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:8])'; }
deps_stamp="$(hash_of "$constraints" "$root/setup.py" "$root/requirements-nodeps.txt")-$("$python" -c 'import sys; print(sys.version.split()[0])')-$(hash_lines "$python" "${extras[@]+"${extras[@]}"}")"
sources=$(cd "$root" && find lib -name '*.py' -not -path '*/__pycache__/*' | LC_ALL=C sort)
archive_stamp="$deps_stamp-$(cd "$root" && hash_of $sources)-level$level-$(hash_lines "${EXCLUDED[@]}")"

venv="$work/venv"
started=$(date +%s)
if [ -f "$output" ] && [ "$(cat "$output.stamp" 2>/dev/null)" = "$archive_stamp" ]; then
  echo "package-env: $output is up to date ($(du -h "$output" | cut -f1)); nothing to do"
  exit 0
fi

mkdir -p "$work" "$(dirname "$output")"
if [ "$(cat "$work/deps.stamp" 2>/dev/null)" != "$deps_stamp" ]; then
  echo "package-env: creating a virtualenv from $python in $venv (first time: a few minutes)"
  rm -rf "$venv" "$work/deps.stamp"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade "pip>=24" wheel "setuptools<81" -c "$root/constraints.txt" "venv-pack"
  fresh=1
else
  echo "package-env: reusing the virtualenv in $venv (dependencies unchanged)"
  fresh=0
fi

# The project as a wheel, built without build isolation so that no network is needed. setuptools
# stages into build/lib and never deletes from it: a module removed from lib/ would live on.
rm -rf "$work/dist" "$root/build/lib" "$root"/build/bdist.*
(cd "$root" && "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" .)
wheel=$(ls "$work/dist"/lookalike-*.whl)
if [ "$fresh" = 1 ]; then
  "$venv/bin/python" -m pip install -q -c "$constraints" "$wheel" "${extras[@]+"${extras[@]}"}"
  "$venv/bin/python" -m pip install -q --no-deps -c "$constraints" -r "$root/requirements-nodeps.txt"
  "$venv/bin/python" -m pip uninstall -q -y pyspark py4j
  echo "$deps_stamp" > "$work/deps.stamp"
else
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel"
fi
# Editable installs and source checkouts are what venv-pack cannot ship; a plain wheel install
# keeps the environment independent of this directory.
"$venv/bin/python" -c 'import lookalike, sys; sys.exit(0 if "/site-packages/" in lookalike.__file__ else "lookalike not installed from the wheel: " + lookalike.__file__)'

rm -f "$output" "$output.stamp"
excludes=()
for pattern in "${EXCLUDED[@]}"; do excludes+=(--exclude "$pattern"); done
"$venv/bin/venv-pack" -q -p "$venv" -o "$output" --compress-level "$level" "${excludes[@]}"
echo "$archive_stamp" > "$output.stamp"
echo "package-env: wrote $output ($(du -h "$output" | cut -f1)) in $(( $(date +%s) - started ))s; pins $(basename "$constraints"); Python $("$python" -c 'import sys; print(sys.version.split()[0])') from $python"
echo "  submit with: ./spark-submit.sh <job> --master URL --env $output"
