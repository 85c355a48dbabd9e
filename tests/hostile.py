"""Hostile files, made on demand into a folder: nothing binary is checked in.

Each ``make_*`` function writes one file (or two) into ``folder`` and returns its path. What they are:

* not checkpoints: empty, text, random bytes, a torch zip cut short, a list, a dict of strings;
* files that run code if unpickled (a plain pickle, and torch's zip format whose ``data.pkl`` is one): their
  payload creates ``canary`` through ``os.system``, so a test asserts the canary never appears;
* converted-model files (``falcon-explorer/converted-v1``) whose ``"model"`` names code: ``tempfile:mkdtemp``
  and ``factory.py:factory`` (a factory that creates the canary when called);
* files that ask for memory: a zip bomb (a deflate-compressed zero tensor: a few MB on disk, gigabytes
  unpacked; made without ever holding the zeros), a stride-0 expanded view (a few bytes stored, a huge shape),
  a converted file asking for 2^24 classes;
* weights that are not numbers a float32 model takes: NaN/inf, float64/float16/bfloat16, int64, bool, complex.

``state`` arguments are a real ``state_dict`` (the tests use the bundled digits-vgg's) that the file alters.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import shlex
import struct
import zipfile
import zlib
from pathlib import Path

import torch

CONVERTED_FORMAT = "falcon-explorer/converted-v1"


# ----------------------------------------------------------------------------------------------
# not checkpoints
def make_empty(folder: Path) -> Path:
    path = Path(folder) / "empty.pt"
    path.write_bytes(b"")
    return path


def make_text(folder: Path) -> Path:
    path = Path(folder) / "notes.pt"
    path.write_text("epoch 10: accuracy 0.97\nthis is not a checkpoint\n")
    return path


def make_random(folder: Path, size: int = 4096, seed: int = 0) -> Path:
    path = Path(folder) / "random.pt"
    gen = torch.Generator().manual_seed(seed)
    path.write_bytes(bytes(torch.randint(0, 256, (size,), generator=gen, dtype=torch.uint8).tolist()))
    return path


def make_truncated(folder: Path, state: dict[str, torch.Tensor], keep: float = 0.5) -> Path:
    """A real torch.save zip of ``state``, cut to ``keep`` of its length (its directory at the end is lost)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    path = Path(folder) / "truncated.pt"
    path.write_bytes(buf.getvalue()[: int(len(buf.getvalue()) * keep)])
    return path


def make_list(folder: Path) -> Path:
    path = Path(folder) / "list.pt"
    torch.save([torch.zeros(3), torch.ones(2)], path)
    return path


def make_strings(folder: Path) -> Path:
    path = Path(folder) / "strings.pt"
    torch.save({"features.0.weight": "a string", "classifier.0.weight": "not a tensor"}, path)
    return path


# ----------------------------------------------------------------------------------------------
# files that would run code
class _System:
    """Unpickled, calls ``os.system(command)``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _touch(canary: Path) -> str:
    return f"touch {shlex.quote(str(canary))}"


def make_code_pickle(folder: Path, canary: Path) -> Path:
    """A plain (legacy) pickle whose loading runs ``touch canary``."""
    path = Path(folder) / "code.pkl"
    path.write_bytes(pickle.dumps({"state_dict": _System(_touch(canary))}, protocol=2))
    return path


def make_code_zip(folder: Path, canary: Path) -> Path:
    """torch's zip format (a real torch.save) whose ``data.pkl`` is swapped for one that runs ``touch canary``."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    payload = pickle.dumps({"w": _System(_touch(canary))}, protocol=2)
    path = Path(folder) / "code_zip.pt"
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = payload if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info, data)
    return path


def make_converted_naming_code(folder: Path, canary: Path) -> tuple[Path, Path]:
    """Two converted-model files whose ``"model"`` names code: ``tempfile:mkdtemp`` (any installed function), and
    ``factory.py:factory`` (a file beside them whose factory creates ``canary`` when called)."""
    folder = Path(folder)
    factory = folder / "factory.py"
    factory.write_text("import torch\n\n\ndef factory():\n"
                       f"    open({str(canary)!r}, 'w').write('the factory ran')\n"
                       "    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten())\n")
    paths = []
    for name, model in (("mkdtemp", "tempfile:mkdtemp"), ("factory", f"{factory}:factory")):
        path = folder / f"converted_{name}.pt"
        torch.save({"format": CONVERTED_FORMAT, "model": model, "conv": "falcon", "rank": 1, "sites": [],
                    "state_dict": {}}, path)
        paths.append(path)
    return paths[0], paths[1]


# ----------------------------------------------------------------------------------------------
# files that ask for memory
def make_expanded(folder: Path, state: dict[str, torch.Tensor] | None = None, key: str = "classifier.0.weight",
                  rows: int = 2**24, cols: int = 128, name: str = "expanded.pt") -> Path:
    """``state`` (or nothing) with ``key`` a stride-0 view ``zeros(1, 1).expand(rows, cols)``: 4 bytes stored,
    rows × cols × 4 bytes (8 GiB by default) claimed by its shape."""
    out = dict(state or {})
    out[key] = torch.zeros(1, 1).expand(rows, cols)
    path = Path(folder) / name
    torch.save(out, path)
    return path


def make_converted_classes(folder: Path, model: str = "digits-vgg", classes: int = 2**24) -> Path:
    """A converted-model file of a registry model whose metadata asks for ``classes`` classes."""
    path = Path(folder) / "converted_classes.pt"
    torch.save({"format": CONVERTED_FORMAT, "model": model, "num_classes": classes, "conv": "falcon", "rank": 1,
                "sites": [], "state_dict": {"x": torch.zeros(1)}}, path)
    return path


class _Storage:
    def __init__(self, key: str, numel: int):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch pickles a float32 tensor of ``shape`` on storage ``key`` (nothing is allocated)."""

    def __init__(self, key: str, shape: tuple[int, ...]):
        self.storage = _Storage(key, int(torch.Size(shape).numel()))
        self.shape = tuple(shape)

    def __reduce__(self):
        stride = tuple(int(torch.Size(self.shape[i + 1:]).numel()) for i in range(len(self.shape)))
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return "storage", torch.FloatStorage, obj.key, "cpu", obj.numel
        return None


def _crc32_zeros(length: int) -> int:
    """zlib.crc32 of ``length`` zero bytes, by zlib's crc32_combine (GF(2) operators), without the bytes."""
    def times(mat: list[int], vec: int) -> int:
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec, i = vec >> 1, i + 1
        return out

    def square(mat: list[int]) -> list[int]:
        return [times(mat, mat[n]) for n in range(32)]

    def combine(crc1: int, crc2: int, len2: int) -> int:  # crc32(A + B) from crc32(A), crc32(B), len(B)
        odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
        even = square(odd)
        odd = square(even)
        while len2:
            even = square(odd)
            if len2 & 1:
                crc1 = times(even, crc1)
            len2 >>= 1
            if not len2:
                break
            odd = square(even)
            if len2 & 1:
                crc1 = times(odd, crc1)
            len2 >>= 1
        return crc1 ^ crc2

    crc, block, size = 0, zlib.crc32(b"\0"), 1  # block: the crc of `size` zero bytes
    while length:
        if length & 1:
            crc = combine(crc, block, size)
        block, size, length = combine(block, block, size), size * 2, length >> 1
    return crc


def _deflated_zeros(nbytes: int, chunk: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``nbytes`` zero bytes (a multiple of ``chunk``), built from one compressed chunk:
    after a full flush the compressor starts afresh, so every chunk compresses to the same bytes."""
    if nbytes % chunk:
        raise ValueError(f"nbytes must be a multiple of {chunk}")
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * (nbytes // chunk) + c.flush(zlib.Z_FINISH)


def _write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip of (name, data as stored, method, uncompressed size, crc32) entries; zip64 sizes where needed."""
    local, central = bytearray(), bytearray()
    for name, data, method, size, crc in entries:
        big = size >= 0xFFFFFFFF or len(data) >= 0xFFFFFFFF
        raw = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data)) if big else b""
        sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (len(data), size)
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0x21, crc, *sizes, len(raw), len(extra))
        local += raw + extra + data
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0x21, crc, *sizes, len(raw),
                               len(extra), 0, 0, 0, 0, offset)
        central += raw + extra
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(local), 0)
    Path(path).write_bytes(bytes(local + central + end))


def make_zip_bomb(folder: Path, nbytes: int = 5 << 30, key: str = "classifier.0.weight") -> Path:
    """torch's zip format holding ``{key: zeros(nbytes // 4)}`` (float32) with the tensor's entry deflate-compressed:
    about nbytes / 1000 on disk (5 GiB → 5 MB). torch.load would allocate and unpack all of it."""
    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump({key: _Tensor("0", (nbytes // 4,))})
    stored = [("bomb/data.pkl", buf.getvalue()), ("bomb/byteorder", b"little"), ("bomb/version", b"3")]
    entries = [(name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)) for name, data in stored]
    entries.append(("bomb/data/0", _deflated_zeros(nbytes), zipfile.ZIP_DEFLATED, nbytes, _crc32_zeros(nbytes)))
    path = Path(folder) / "bomb.pt"
    _write_zip(path, entries)
    return path


# ----------------------------------------------------------------------------------------------
# weights that are not numbers a float32 model takes
def make_nonfinite(folder: Path, state: dict[str, torch.Tensor], key: str, nan: int = 12, inf: int = 3) -> Path:
    """``state`` with ``nan`` NaN and ``inf`` inf values (alternating +inf/-inf) at the start of ``key``."""
    out = {k: v.clone() for k, v in state.items()}
    flat = out[key].view(-1)
    flat[:nan] = float("nan")
    flat[nan:nan + inf] = torch.tensor([float("inf"), float("-inf")]).repeat(inf)[:inf]
    path = Path(folder) / f"nonfinite_{nan}_{inf}.pt"
    torch.save(out, path)
    return path


def make_retyped(folder: Path, state: dict[str, torch.Tensor], dtype: torch.dtype, key: str | None = None) -> Path:
    """``state`` with every floating tensor (or only ``key``) cast to ``dtype`` (integers: rounded)."""
    out = {}
    for k, v in state.items():
        cast = v.is_floating_point() and (key is None or k == key)
        out[k] = (v.round() if not dtype.is_floating_point else v).to(dtype) if cast else v.clone()
    path = Path(folder) / f"{str(dtype)[6:]}.pt"
    torch.save(out, path)
    return path
