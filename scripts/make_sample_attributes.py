"""Write samples/clothing-attributes.csv: the attributes table the README's SQL example joins.

One row per sample image: ``item_id`` (as the embed job derives it), ``category`` (its label),
``colour`` (the name of the palette colour nearest the photo's mean colour over its central half,
where the garment usually is: computed, not annotated) and ``in_stock`` (made up for the example:
every fifth item by a hash of its id is out of stock). Regenerate with
`python scripts/make_sample_attributes.py`; it is never edited by hand.
"""

import csv
import hashlib
import os
import sys

from PIL import Image

SAMPLES = sys.argv[1] if len(sys.argv) > 1 else "samples"
PALETTE = {
    "black": (30, 30, 30),
    "grey": (128, 128, 128),
    "white": (235, 235, 235),
    "red": (190, 40, 40),
    "orange": (230, 130, 40),
    "yellow": (230, 210, 60),
    "green": (60, 140, 70),
    "blue": (50, 80, 170),
    "purple": (120, 60, 140),
    "pink": (230, 150, 180),
    "brown": (120, 80, 50),
    "beige": (210, 190, 150),
}


def colour_of(path: str) -> str:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
        w, h = rgb.size
        centre = rgb.crop((w // 4, h // 4, w - w // 4, h - h // 4)).resize((1, 1), Image.Resampling.BOX)
        mean = centre.getpixel((0, 0))
    return min(PALETTE, key=lambda name: sum((a - b) ** 2 for a, b in zip(mean, PALETTE[name], strict=True)))


rows = list(csv.DictReader(open(os.path.join(SAMPLES, "clothing-labels.csv"), encoding="utf-8")))
with open(os.path.join(SAMPLES, "clothing-attributes.csv"), "w", newline="", encoding="utf-8") as out:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["item_id", "category", "colour", "in_stock"])
    for row in rows:
        image = os.path.join(SAMPLES, "clothing", row["item_id"] + ".jpg")
        in_stock = int(hashlib.sha1(row["item_id"].encode()).hexdigest(), 16) % 5 != 0
        writer.writerow([row["item_id"], row["label"], colour_of(image), str(in_stock).lower()])
print(f"wrote {len(rows)} rows to {os.path.join(SAMPLES, 'clothing-attributes.csv')}")
