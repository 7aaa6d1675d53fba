"""The five frost textures of the reference generator, read from the installed
``imagecorruptions`` distribution's data files (Apache-2.0). Its code is never imported (it does
not run on current numpy/scikit-image); only the image files are used.
"""

from __future__ import annotations

import importlib.metadata
import os
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

# The reference draws one of the first five files uniformly.
FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

INSTALL_HINT = (
    "frost needs the texture files shipped in the 'imagecorruptions' package: "
    "pip install --no-deps imagecorruptions (only its texture files are used; the tta[frost] "
    "extra installs it with its own dependencies, opencv-python and scikit-image)"
)


def texture_paths() -> list[str]:
    """Absolute paths of frost1..frost5 inside the installed distribution."""
    try:
        dist = importlib.metadata.distribution("imagecorruptions")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{INSTALL_HINT}; it is not installed.") from None
    found = {}
    for f in dist.files or []:
        base = os.path.basename(str(f))
        if base in FILES and "frost" in str(f):
            found[base] = str(dist.locate_file(f))
    missing = [name for name in FILES if name not in found or not os.path.isfile(found[name])]
    if missing:
        raise RuntimeError(f"{INSTALL_HINT}; the installed copy lacks {', '.join(missing)}.")
    return [found[name] for name in FILES]


@lru_cache(maxsize=1)
def textures() -> tuple[torch.Tensor, torch.Tensor]:
    """All five textures shrunk x0.2, padded into one uint8 tensor (5, Hmax, Wmax, 3), and their
    true sizes (5, 2) as (height, width).

    The reference shrinks with cv2.resize(fx=fy=0.2), bilinear with half-pixel centres: output
    pixel d samples input 5d + 2 exactly, so the shrink is a plain subsampling. Alpha is dropped,
    as cv2.imread does.
    """
    arrays = []
    for path in texture_paths():
        with Image.open(path) as im:
            full = np.asarray(im.convert("RGB"))
        h, w = int(round(full.shape[0] * 0.2)), int(round(full.shape[1] * 0.2))
        arrays.append(full[2::5, 2::5][:h, :w])
    hmax = max(a.shape[0] for a in arrays)
    wmax = max(a.shape[1] for a in arrays)
    stacked = np.zeros((len(arrays), hmax, wmax, 3), dtype=np.uint8)
    for i, a in enumerate(arrays):
        stacked[i, : a.shape[0], : a.shape[1]] = a
    sizes = torch.tensor([a.shape[:2] for a in arrays], dtype=torch.long)
    return torch.from_numpy(stacked), sizes
