"""The runtimes a whole model is timed in: ``eager``, ``compile`` (inductor, frozen weights) and ``onnxruntime``;
whether each can run here (:func:`runtime_info`: its version, or the one-line reason it cannot)."""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from falcon.bench import MEMORY_FORMATS
from falcon.errors import FalconError, one_line

RUNTIMES = ("eager", "compile", "onnxruntime")


@dataclass
class RuntimeInfo:
    name: str
    available: bool
    version: str | None = None
    reason: str = ""  # one line when unavailable
    options: dict = field(default_factory=dict)


def _line(error: BaseException | str, limit: int = 180) -> str:
    return one_line(error, limit, empty=type(error).__name__)


def runtime_info(name: str, device: torch.device) -> RuntimeInfo:
    """Whether ``name`` can run on ``device`` here, its version, or the one-line reason it cannot."""
    if name == "eager":
        return RuntimeInfo("eager", True, f"torch {torch.__version__}")
    if name == "compile":
        return _compile_info(device)
    if name == "onnxruntime":
        return _onnxruntime_info(device)
    raise FalconError(f"unknown runtime {name!r}; choose from {', '.join(RUNTIMES)}")


def _compile_info(device: torch.device) -> RuntimeInfo:
    name, version = "compile", f"torch {torch.__version__} inductor"
    if not hasattr(torch, "compile"):
        return RuntimeInfo(name, False, version, f"torch.compile unavailable: torch {torch.__version__} has none")
    try:
        from torch._dynamo.eval_frame import is_dynamo_supported

        if not is_dynamo_supported():
            return RuntimeInfo(name, False, version, f"torch.compile unavailable: not supported on Python "
                                                     f"{sys.version.split()[0]} / this platform")
    except Exception as e:  # noqa: BLE001
        return RuntimeInfo(name, False, version, f"torch.compile unavailable: {_line(e)}")
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton

            if not has_triton():
                return RuntimeInfo(name, False, version, "torch.compile unavailable: inductor on CUDA needs "
                                                         "triton, which is not installed")
        except ImportError:
            pass
    else:
        compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
        if not any(c and shutil.which(c) for c in compilers):
            return RuntimeInfo(name, False, version, "torch.compile unavailable: inductor needs a C++ compiler "
                                                     "(g++ or clang++) on PATH, and none was found")
    return RuntimeInfo(name, True, version, options={"backend": "inductor", "freezing": True})


def _onnxruntime_info(device: torch.device) -> RuntimeInfo:
    name = "onnxruntime"
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:
        missing = getattr(e, "name", None) or "onnxruntime"
        return RuntimeInfo(name, False, None, f"onnxruntime unavailable: the {missing} package is not installed "
                                              "(pip install 'falcon-explorer[onnx]')")
    providers = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" not in providers:
        return RuntimeInfo(name, False, f"onnxruntime {ort.__version__}",
                           "onnxruntime unavailable on CUDA: this onnxruntime has no CUDAExecutionProvider "
                           "(install onnxruntime-gpu)")
    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    return RuntimeInfo(name, True, f"onnxruntime {ort.__version__}",
                       options={"provider": provider, "onnx": onnx.__version__, "exporter": "torch.onnx.export "
                                "(TorchScript-based, dynamo=False)", "graph_optimization": "ORT_ENABLE_ALL"})


def parse_runtimes(runtimes: str | Iterable[str]) -> list[str]:
    names = [r.strip() for r in (runtimes.split(",") if isinstance(runtimes, str) else runtimes) if str(r).strip()]
    if not names:
        raise FalconError("give at least one runtime: " + ", ".join(RUNTIMES))
    for r in names:
        if r not in RUNTIMES:
            raise FalconError(f"unknown runtime {r!r}; choose from {', '.join(RUNTIMES)}")
    return list(dict.fromkeys(names))


def _layouts(memory_format: str) -> list[str]:
    if memory_format in ("auto", "both"):
        return list(MEMORY_FORMATS)
    if memory_format not in MEMORY_FORMATS:
        raise FalconError(f"memory format must be auto, both, {' or '.join(MEMORY_FORMATS)}, got {memory_format!r}")
    return [memory_format]


def _ort_call(session, x: torch.Tensor, device: torch.device):
    import numpy as np

    name = session.get_inputs()[0].name
    if device.type == "cuda":  # inputs and outputs stay on the GPU (IO binding): no host copies timed
        out_meta = session.get_outputs()[0]
        binding = session.io_binding()
        x = x.contiguous()
        binding.bind_input(name, "cuda", device.index or 0, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(out_meta.name, "cuda", device.index or 0)

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding.copy_outputs_to_cpu()[0]
        return call
    feed = {name: x.detach().cpu().contiguous().numpy()}
    return lambda: session.run(None, feed)[0]

