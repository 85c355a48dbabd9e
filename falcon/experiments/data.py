"""Data sets for experiments: the bundled digits, and CIFAR-10/100 and SVHN through torchvision.

``digits`` works offline (``falcon/data/digits.npz``: train split 1,347 images, held-out split 450, the split
digits-vgg was trained and measured on). The torchvision sets are read from ``data_dir`` (``--data-dir``,
else ``$FALCON_DATA_DIR``, else ``~/.cache/falcon-explorer/datasets``) and downloaded there when
missing and ``download`` is allowed. Without a network the download fails within seconds with a
:class:`~falcon.errors.FalconError` that names the file to place in ``data_dir``: the host is probed
first with a timeout (so a black-holed DNS or route cannot hang the run), and the download itself runs
with a socket timeout.
"""
from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from falcon.errors import FalconError

ENV_VAR = "FALCON_DATA_DIR"
PROBE_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class DataSpec:
    """A data set ready for the pipeline: train and held-out splits and what a model must accept."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W)
    #: augmentation applied to whole training batches (the digits' random shifts); None for none
    train_batch_transform: BatchTransform | None = field(default=None, repr=False)
    source: str = ""


@dataclass(frozen=True)
class _TorchvisionSet:
    label: str
    cls_name: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool  # horizontal flips make sense for objects, not for house numbers

    def files(self) -> list[tuple[str, str]]:
        """(url, file name) of what the download fetches."""
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.cls_name)
        if self.cls_name == "SVHN":
            return [(cls.split_list[s][0], cls.split_list[s][1]) for s in ("train", "test")]
        return [(cls.url, cls.filename)]


TORCHVISION_SETS: dict[str, _TorchvisionSet] = {
    "cifar10": _TorchvisionSet("CIFAR-10", "CIFAR10", 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    "cifar100": _TorchvisionSet("CIFAR-100", "CIFAR100", 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    "svhn": _TorchvisionSet("SVHN", "SVHN", 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), False),
}

DATASETS: tuple[str, ...] = ("digits", *TORCHVISION_SETS)


def default_data_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "falcon-explorer" / "datasets"


# ----------------------------------------------------------------------------------------------
# fail-fast download
def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`OSError` unless a TCP connection to ``url``'s host opens within ``timeout`` s.

    Name resolution and the connection run in a daemon thread so that neither can block longer.
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        raise OSError(f"no host in {url!r}")
    result: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            result.append(e)

    t = threading.Thread(target=connect, daemon=True, name="falcon-probe")
    t.start()
    t.join(timeout)
    if not result:
        raise OSError(f"{host}:{port} did not answer within {timeout:g} s")
    if result[0] is not None:
        raise OSError(f"{host}:{port} is unreachable ({result[0]})")


@contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _offline_message(spec: _TorchvisionSet, root: Path, why: str) -> str:
    files = spec.files()
    what = " and ".join(f"{name} (from {url})" for url, name in files)
    extract = " (the .tar.gz is extracted automatically)" if spec.cls_name != "SVHN" else ""
    return (f"{spec.label} is not in {root} and cannot be downloaded: {why}. "
            f"Place {what} in {root}{extract}, or pass --data-dir DIR where it is")


def _open_torchvision(name: str, root: Path, download: bool, probe_timeout: float) -> tuple[Dataset, Dataset]:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    spec = TORCHVISION_SETS[name]
    cls = getattr(tvd, spec.cls_name)
    normalize = [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    augment = [T.RandomCrop(32, padding=4)] + ([T.RandomHorizontalFlip()] if spec.flip else [])
    train_tf, test_tf = T.Compose(augment + normalize), T.Compose(normalize)

    def build(dl: bool) -> tuple[Dataset, Dataset]:
        if spec.cls_name == "SVHN":
            return (cls(str(root), split="train", download=dl, transform=train_tf),
                    cls(str(root), split="test", download=dl, transform=test_tf))
        return (cls(str(root), train=True, download=dl, transform=train_tf),
                cls(str(root), train=False, download=dl, transform=test_tf))

    try:
        return build(False)
    except (RuntimeError, OSError, FileNotFoundError):
        pass  # not there (or incomplete): download below
    except ImportError as e:
        raise FalconError(f"{spec.label} needs {e.name or 'a missing package'}: pip install scipy") from None
    # the archive already there (not yet extracted): torchvision checks its md5 and extracts it, offline
    archived = all((root / name).is_file() for _, name in spec.files())
    if not download and not archived:
        raise FalconError(_offline_message(spec, root, "downloads are turned off"))
    try:
        if not archived:
            for url, _ in spec.files():
                probe(url, probe_timeout)
        root.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            return build(True)
    except FalconError:
        raise
    except ImportError as e:
        raise FalconError(f"{spec.label} needs {e.name or 'a missing package'}: pip install scipy") from None
    except Exception as e:  # noqa: BLE001 - URLError, timeouts, checksum and extraction errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FalconError(_offline_message(spec, root, f"no network? ({first})")) from None


# ----------------------------------------------------------------------------------------------
def _digits() -> DataSpec:
    from falcon.datasets import DIGITS_MEAN, DIGITS_STD, DIGITS_NUM_CLASSES, load_digits
    from falcon.models.digits import DEFAULT_MAX_SHIFT, random_shift

    fill = (0.0 - DIGITS_MEAN) / DIGITS_STD

    def shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return random_shift(x, DEFAULT_MAX_SHIFT, fill, gen)

    return DataSpec("digits", load_digits("train"), load_digits("test"), DIGITS_NUM_CLASSES, (1, 32, 32),
                    shift, "bundled falcon/data/digits.npz (held-out split of digits-vgg)")


def _limit(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if isinstance(ds, TensorDataset):  # keep .tensors (and the speed of slicing)
        return TensorDataset(*(t[: int(n)] for t in ds.tensors))
    return Subset(ds, range(int(n)))


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
                 limit_train: int | None = None, limit_test: int | None = None,
                 probe_timeout: float = PROBE_TIMEOUT_S) -> DataSpec:
    """The train and held-out splits of ``name`` (one of :data:`DATASETS`).

    ``limit_train``/``limit_test`` keep the first N images (quick runs and tests).
    """
    if name not in DATASETS:
        raise FalconError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if name == "digits":
        spec = _digits()
    else:
        root = Path(data_dir).expanduser() if data_dir else default_data_dir()
        train, test = _open_torchvision(name, root, download, probe_timeout)
        tv = TORCHVISION_SETS[name]
        spec = DataSpec(name, train, test, tv.num_classes, (3, 32, 32), None, f"torchvision {tv.cls_name} in {root}")
    spec.train = _limit(spec.train, limit_train)
    spec.test = _limit(spec.test, limit_test)
    return spec
