"""Write the README's pictures of the default synthetic EM data (docs/em_synthetic.png)."""

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from skimage.segmentation import find_boundaries

root = Path(__file__).resolve().parents[1]
image = tifffile.imread(root / "data/em/training.tif")
mask = tifffile.imread(root / "data/em/training_groundtruth.tif") > 0
tiles = []
for z in (2, 11, 20):
    raw = np.repeat(image[z][..., None], 3, axis=-1)
    outlined = raw.copy()
    outlined[find_boundaries(mask[z], mode="inner")] = (255, 200, 0)
    tiles.append(np.concatenate([raw, np.full((raw.shape[0], 4, 3), 255, np.uint8), outlined], axis=1))
gap = np.full((4, tiles[0].shape[1], 3), 255, np.uint8)
figure = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=0)
(root / "docs").mkdir(exist_ok=True)
Image.fromarray(figure).save(root / "docs/em_synthetic.png", optimize=True)
print("wrote docs/em_synthetic.png")
