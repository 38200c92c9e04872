"""Within-tile ranking of gland pixels on GlaS (talk protocol: malignant tiles only).

For each malignant tile with both classes in its mask, the AUC of a per-pixel score against the
gland mask: how well the score ranks gland pixels above the other pixels *of the same tile*
(0.5 = chance). Scores: the run's normalised CAM (as stored by the cam stage), and the
haematoxylin channel (scikit-image's rgb2hed of the image as stored, not stain-normalised),
raw and smoothed by a Gaussian of sigma 8 and 16 px. Mean over tiles, per split.

usage: python3 within_tile_auc.py GLAS_DIR OUT.csv RUN_DIR...   (RUN_DIR holds cams/ and config.toml)
"""
import csv, re, sys
import numpy as np
from PIL import Image
from scipy.stats import rankdata
from skimage.color import rgb2hed
from skimage.filters import gaussian

glas, out, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = list(csv.DictReader(open(f"{glas}/labels.csv")))
train = {2, 4, 5, 8, 10, 11, 12, 13, 14}
valid = {1, 15, 16}


def auc(y, x):
    r = rankdata(x)
    n1 = y.sum()
    n0 = len(y) - n1
    return (r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


hcache = {}
result = []
for run in runs:
    cfg = open(f"{run}/config.toml").read()
    seed = int(re.search(r"\[train\][^\[]*?\nseed = (\d+)", cfg).group(1))
    acc = {}
    for r in rows:
        p = int(r["patient_id"])
        split = "train" if p in train else "valid" if p in valid else None
        if split is None or r["label"] != "malignant":
            continue
        m = (np.array(Image.open(f"{glas}/{r['mask']}")) > 0).ravel()
        if m.all() or not m.any():
            continue
        if r["name"] not in hcache:
            img = np.array(Image.open(f"{glas}/{r['image']}").convert("RGB"))
            h = rgb2hed(img)[..., 0]
            hcache[r["name"]] = {
                "haematoxylin": h.ravel(),
                "haematoxylin_s8": gaussian(h, 8).ravel(),
                "haematoxylin_s16": gaussian(h, 16).ravel(),
            }
        cam = np.array(Image.open(f"{run}/cams/{r['name']}.png")).astype(float).ravel()
        scores = {"cam": cam, **hcache[r["name"]]}
        for k, v in scores.items():
            acc.setdefault((split, k), []).append(auc(m.astype(int), v))
    for (split, k), v in sorted(acc.items()):
        result.append((seed, split, k, len(v), float(np.mean(v))))
        print(seed, split, k, len(v), round(float(np.mean(v)), 3), flush=True)
with open(out, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["seed", "split", "score", "tiles", "mean_auc"])
    w.writerows(result)
