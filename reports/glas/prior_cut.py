"""Per-tile against pooled Otsu cut of the nuclear-density prior (talk protocol, malignant tiles).

The prior of `cam.refine = "haematoxylin"` cuts the smoothed haematoxylin channel (scikit-image's
rgb2hed, Gaussian sigma 16 px) at its Otsu threshold per tile. The alternative scored here cuts
every tile at one Otsu threshold fitted on the pooled pixels of the training patients' malignant
tiles. Each cut, taken alone as the gland prediction, is scored against the masks by the tile's
2-class mIoU; mean per split. Masks are read only to score.

usage: python3 prior_cut.py GLAS_DIR OUT.csv
"""
import csv, sys
import numpy as np
from PIL import Image
from skimage.color import rgb2hed
from skimage.filters import gaussian, threshold_otsu

glas, out = sys.argv[1], sys.argv[2]
rows = list(csv.DictReader(open(f"{glas}/labels.csv")))
splits = {"train": {2, 4, 5, 8, 10, 11, 12, 13, 14}, "valid": {1, 15, 16}, "test": {3, 6}}


def miou(pred, m):
    ious = []
    for p, g in ((pred, m), (~pred, ~m)):
        u = (p | g).sum()
        ious.append((p & g).sum() / u if u else 1.0)
    return float(np.mean(ious))


tiles = []
for r in rows:
    sp = next((k for k, v in splits.items() if int(r["patient_id"]) in v), None)
    if sp is None or r["label"] != "malignant":
        continue
    img = np.array(Image.open(f"{glas}/{r['image']}").convert("RGB"))
    h = gaussian(rgb2hed(img)[..., 0], 16)
    m = np.array(Image.open(f"{glas}/{r['mask']}")) > 0
    tiles.append((sp, r["patient_id"], r["name"], h, m))
pooled = threshold_otsu(np.concatenate([t[3].ravel() for t in tiles if t[0] == "train"]))
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["split", "patient", "tile", "per_tile_miou", "pooled_miou", "per_tile_fg", "pooled_fg"])
    for sp, p, n, h, m in tiles:
        a, b = h > threshold_otsu(h), h > pooled
        w.writerow([sp, p, n, round(miou(a, m), 4), round(miou(b, m), 4), round(a.mean(), 4), round(b.mean(), 4)])
for sp in splits:
    v = [(miou(h > threshold_otsu(h), m), miou(h > pooled, m)) for s, _, _, h, m in tiles if s == sp]
    print(sp, len(v), "per-tile", round(np.mean([a for a, _ in v]), 3), "pooled", round(np.mean([b for _, b in v]), 3))
