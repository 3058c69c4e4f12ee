#!/usr/bin/env bash
# What `make demo` runs: the pipeline on the shipped sample, then a look at the results.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
job=pipeline
[ -f jobs/pipeline.py ] || job=embed
./spark-submit.sh "$job" --config conf/local.yaml
.venv/bin/python - <<'PY'
import pyarrow.parquet as pq
table = pq.read_table("output/embeddings").select(["item_id", "weights", "dim", "embedding"])
print(f"\nembeddings: {table.num_rows} rows in output/embeddings (schema: README 'Output tables')")
for row in table.slice(0, 3).to_pylist():
    print(f"  {row['item_id']:55s} dim={row['dim']} weights={row['weights']} [{', '.join(f'{v:.3f}' for v in row['embedding'][:4])}, ...]")
PY
if [ -d output/neighbours ]; then
  for item in $(.venv/bin/python -c "import pyarrow.parquet as pq; ids = sorted(pq.read_table('output/embeddings', columns=['item_id']).column(0).to_pylist()); print(ids[0], ids[len(ids) // 2])"); do
    .venv/bin/lookalike similar "$item" --neighbours output/neighbours -k 5 || true
  done
fi
