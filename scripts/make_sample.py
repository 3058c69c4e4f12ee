"""Rebuild samples/clothing from ../shared/data/clothing-small: 6 images per class, <= 256 px.

The shipped sample is what `make demo` and the tests run on; it is regenerated with this script,
never edited by hand, so its provenance stays checkable.
"""

import csv
import os
import shutil
import sys

from PIL import Image

SOURCE = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/clothing-small"
TARGET = sys.argv[2] if len(sys.argv) > 2 else "samples/clothing"
PER_CLASS = 6

rows = list(csv.DictReader(open(os.path.join(SOURCE, "labels.csv"))))
chosen = []
for label in sorted({r["label"] for r in rows}):
    # Sorted paths from the test split: deterministic, and no training images in the sample.
    chosen += sorted((r for r in rows if r["label"] == label and r["split"] == "test"), key=lambda r: r["path"])[
        :PER_CLASS
    ]
if os.path.exists(TARGET):
    shutil.rmtree(TARGET)
with open(os.path.join(os.path.dirname(TARGET) or ".", "clothing-labels.csv"), "w", newline="") as out:
    writer = csv.writer(out)
    writer.writerow(["item_id", "label"])
    for r in chosen:
        name = os.path.splitext(os.path.basename(r["path"]))[0]
        item_id = f"{r['label']}/{name}"
        dest = os.path.join(TARGET, item_id + ".jpg")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        img = Image.open(os.path.join(SOURCE, r["path"])).convert("RGB")
        img.thumbnail((256, 256), Image.LANCZOS)
        img.save(dest, "JPEG", quality=85)
        writer.writerow([item_id, r["label"]])
shutil.copy(os.path.join(SOURCE, "LICENSE"), os.path.join(TARGET, "LICENSE"))
with open(os.path.join(TARGET, "PROVENANCE.md"), "w") as out:
    out.write(
        "# Sample images\n\n"
        f"{len(chosen)} JPEG thumbnails (at most 256 px, quality 85), {PER_CLASS} per class, the first "
        "files by path of each class in the test split of clothing-dataset-small "
        "(github:alexeygrigorev/clothing-dataset-small, commit 11961516512414bf9f6c150a832cfd21b54a6b54), "
        "a 10-class subset of github:alexeygrigorev/clothing-dataset. Licence: CC0 1.0 Universal "
        "(LICENSE beside this file). Labels: ../clothing-labels.csv (item_id,label). "
        "Regenerate with `python scripts/make_sample.py`.\n"
    )
print(f"wrote {len(chosen)} images to {TARGET}")
