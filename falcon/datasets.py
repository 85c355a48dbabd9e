"""Small bundled data sets that work offline.

``falcon/data/digits.npz`` holds scikit-learn's copy of the UCI "Optical Recognition of
Handwritten Digits" test set (1,797 8x8 images, values 0..16, CC BY 4.0) with a
fixed stratified train/test split; see ``falcon/data/DIGITS.md``.  It is rebuilt by
``python scripts/train_digits.py --make-data``.
"""

from __future__ import annotations

import functools
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from falcon.data import DATA_DIR
from falcon.errors import FalconError
from falcon.limits import parse_int

DIGITS_FILE = DATA_DIR / "digits.npz"

SPLITS = ("train", "test", "all")
DIGITS_RAW_MAX = 16  # pixel values in the file are integers 0..16
DIGITS_NUM_CLASSES = 10

# Normalisation constants, computed once (float64) over the *train* split only:
# raw images / 16 -> [0, 1], bilinear upsampling 8x8 -> 32x32
# (F.interpolate, align_corners=False), then the mean and standard deviation of
# every pixel of the 1,347 upsampled training images: 0.305696 and 0.323893.
# They are used unchanged for every split and every ``size``.
DIGITS_MEAN = 0.3057
DIGITS_STD = 0.3239


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> dict[str, np.ndarray]:
    """The raw arrays of ``falcon/data/digits.npz``, read once (treat as read-only)."""
    if not DIGITS_FILE.is_file():
        raise FalconError(
            f"{DIGITS_FILE} is missing: reinstall falcon-explorer (in a checkout: python scripts/train_digits.py --make-data)")
    with np.load(DIGITS_FILE) as f:
        arrays = {k: f[k] for k in ("images", "labels", "train_idx", "test_idx")}
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


def digits_indices(split: str) -> np.ndarray:
    """Row indices (into the full 1,797-image array) of ``split``."""
    if split not in SPLITS:
        raise FalconError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    arrays = _digits_arrays()
    if split == "all":
        return np.arange(len(arrays["labels"]))
    return arrays[f"{split}_idx"].astype(np.int64)


def load_digits(split: str = "test", size: int = 32) -> TensorDataset:
    """The bundled 8x8 digits as a ``TensorDataset`` of (image, label).

    Images are float32 tensors of shape (N, 1, size, size): raw 0..16 values
    scaled to [0, 1], bilinearly upsampled from 8x8 and normalised with
    :data:`DIGITS_MEAN` / :data:`DIGITS_STD`.  Labels are int64 in 0..9.
    ``split`` is ``"train"`` (1,347 images), ``"test"`` (450) or ``"all"`` (1,797);
    anything else raises :class:`~falcon.errors.FalconError` (a ``ValueError``).
    """
    idx = digits_indices(split)
    size = parse_int(size, "input_size", "size")  # falcon.limits' bound for every input size
    arrays = _digits_arrays()
    x = torch.from_numpy(arrays["images"][idx].astype(np.float32) / DIGITS_RAW_MAX)
    x = x.unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - DIGITS_MEAN) / DIGITS_STD
    y = torch.from_numpy(arrays["labels"][idx].astype(np.int64))
    return TensorDataset(x.contiguous(), y)
