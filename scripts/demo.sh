#!/usr/bin/env bash
# What `make demo` runs: the pipeline on the shipped sample, then a look at the results: the
# neighbours of a few items in the terminal, and a page of thumbnails in output/report.html.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./spark-submit.sh pipeline --config conf/local.yaml
.venv/bin/python - <<'PY'
from lookalike.io.tables import read_table  # the current snapshot of the Iceberg table there
table = read_table("output/embeddings", ["item_id", "model", "weights", "dim"])
row = table.slice(0, 1).to_pylist()[0]
print(f"\nembeddings: {table.num_rows} rows in the Iceberg table lookalike.embeddings (output/embeddings, "
      f"catalog output/catalog.db), made by model={row['model']} weights={row['weights']} ({row['dim']}-d)")
PY
# One item from each of three departments: the first id under dress/, shoes/ and pants/.
for department in dress shoes pants; do
  item=$(.venv/bin/python -c "import sys; from lookalike.io.tables import read_table; print(min(i for i in read_table('output/embeddings', ['item_id']).column(0).to_pylist() if i.startswith(sys.argv[1] + '/')))" "$department")
  .venv/bin/lookalike similar "$item" --neighbours output/neighbours -k 5
done
.venv/bin/lookalike report --embeddings output/embeddings --neighbours output/neighbours --sample 8 -k 6 \
  --title "lookalike demo: 8 items and their 6 nearest neighbours" --out output/report.html
echo "Open output/report.html in a browser to see the pictures."
