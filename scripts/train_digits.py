"""Train the bundled ``digits-vgg`` model (and optionally rebuild its data file).

Run from the repository root::

    python scripts/train_digits.py              # train, write falcon/data/digits_vgg.pt
    python scripts/train_digits.py --make-data  # first rebuild falcon/data/digits.npz

The training itself lives in :func:`falcon.models.digits.train_digits_model`;
this script is a thin command-line wrapper around it.  ``--make-data`` needs
scikit-learn (its bundled copy of the UCI digits, no download); training does not.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # works without ``pip install -e .`` too
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from falcon.data import DATA_DIR  # noqa: E402  (the package data folder of this checkout)

DATA_FILE = DATA_DIR / "digits.npz"
SPLIT_SEED = 0
TEST_FRACTION = 0.25


def stratified_split(labels: np.ndarray, test_fraction: float = TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Per class, shuffle with a seeded PCG64 and put round(n * fraction) in test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx = np.sort(np.concatenate(train)).astype(np.int16)
    test_idx = np.sort(np.concatenate(test)).astype(np.int16)
    return train_idx, test_idx


def make_data(path: Path = DATA_FILE) -> None:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    assert images.shape == (1797, 8, 8) and images.min() >= 0 and images.max() <= 16
    assert np.array_equal(images, np.round(images))
    train_idx, test_idx = stratified_split(labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        images=images.astype(np.uint8),
        labels=labels.astype(np.uint8),
        train_idx=train_idx,
        test_idx=test_idx,
    )
    print(f"wrote {path} ({path.stat().st_size} bytes): "
          f"{len(train_idx)} train / {len(test_idx)} test images")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--make-data", action="store_true",
                        help="rebuild falcon/data/digits.npz from scikit-learn first")
    parser.add_argument("--data-only", action="store_true",
                        help="with --make-data: stop after writing the data file")
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the library's recipe)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None,
                        help="where to save the state_dict (default falcon/data/digits_vgg.pt)")
    args = parser.parse_args(argv)

    if args.make_data:
        make_data()
        if args.data_only:
            return 0

    import torch

    from falcon.models.digits import (DIGITS_WEIGHTS, DEFAULT_EPOCHS, save_weights,
                                      train_digits_model)

    torch.set_num_threads(args.threads)
    epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
    out = DIGITS_WEIGHTS if args.out is None else args.out
    t0 = time.perf_counter()
    model, history = train_digits_model(epochs=epochs, seed=args.seed, verbose=True)
    elapsed = time.perf_counter() - t0
    save_weights(model, out)
    final = history[-1]
    print(f"trained {epochs} epochs in {elapsed:.1f} s; "
          f"test accuracy {final['test_acc']:.4f}; saved {out} "
          f"({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
