"""A model by name, converted and written as a deployable file (ONNX or TorchScript) with the parity check:
what ``python -m falcon export`` runs. Above :mod:`falcon.modelbench` (which prepares the models) and
:mod:`falcon.export` (the deployable form and the writers), so neither imports the other back.
"""
from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from falcon.errors import FalconError
from falcon.export import (FORMATS, DeployInfo, Parity, _need, deploy_form, export_onnx, export_torchscript,
                           onnx_predict, onnx_session, parity)
from falcon.limits import parse_int
from falcon.outputs import check_target, write_bytes


@dataclass
class ExportResult:
    """What ``python -m falcon export`` wrote and how close its output is to eager PyTorch."""

    path: str
    format: str
    model: str
    conv: str
    hparams: dict
    input_size: tuple[int, int, int]
    deploy: DeployInfo
    parity: Parity  # the file, loaded back, against eager fp32 PyTorch (the converted model) on the same input
    runtime: str  # what ran the file for the check
    bytes: int
    replaced_layers: int
    accuracy: dict | None = None  # {"eager": ..., "exported": ...} on the model's held-out data, when it has some
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "model": self.model, "conv": self.conv,
                "hparams": dict(self.hparams), "input_size": list(self.input_size), "deploy": self.deploy.as_dict(),
                "parity": self.parity.as_dict(), "runtime": self.runtime, "bytes": self.bytes,
                "replaced_layers": self.replaced_layers, "accuracy": self.accuracy, "notes": list(self.notes)}


def _write_onnx(deployed: torch.nn.Module, sample: torch.Tensor, path) -> tuple[Callable, str]:
    """Write ``deployed`` as ONNX to ``path`` and load it back: (its predict function, the runtime in words)."""
    write_bytes(path, export_onnx(deployed, sample))  # whole or not at all; OSError: one line
    session = onnx_session(path, threads=torch.get_num_threads())
    runtime = f"onnxruntime {_need('onnxruntime', 'ONNX Runtime').__version__} (CPUExecutionProvider)"
    return (lambda images: onnx_predict(session, images)), runtime


def _write_torchscript(deployed: torch.nn.Module, sample: torch.Tensor, path) -> tuple[Callable, str]:
    """Trace ``deployed``, write it to ``path`` and load it back: (its predict function, the runtime in words)."""
    traced = export_torchscript(deployed, sample)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)  # in memory: a failing disk is Python's OSError, not a C++ abort
        write_bytes(path, buffer.getvalue())
        loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def predict(images):
        with torch.no_grad():
            return torch.cat([loaded(images[i:i + 256]) for i in range(0, images.shape[0], 256)])
    return predict, f"torch.jit.load (torch {torch.__version__})"


def export_model(model: str = "digits-vgg", output: str | os.PathLike = "model.onnx", format: str = "onnx",
                 conv: str = "falcon", weights: str | None = None, input_size: Any = None, batch_size: int = 1,
                 num_classes: int | None = None, evaluate: bool = True, seed: int = 0, **hp: Any) -> ExportResult:
    """Convert ``model`` (:func:`falcon.modelbench.prepare_models`: a fittable type fitted to the trained kernels,
    any other built with random weights; ``standard`` = the original), take its portable deployable form and write
    it to ``output`` as ``format`` (``onnx`` or ``torchscript``). The file is loaded back and run on the same input as
    eager fp32 PyTorch; an error beyond :data:`falcon.export.PARITY_RTOL` (relative) is a :class:`FalconError` (the file is
    kept, for inspection). With ``evaluate`` and a model that has held-out data (digits-vgg), the accuracy of
    both is compared too."""
    from falcon.modelbench import prepare_models

    if format not in FORMATS:
        raise FalconError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    parse_int(batch_size, "export_batch_size", "batch size")  # the sample's: the ONNX batch stays dynamic
    if format == "onnx":
        _need("onnx", "ONNX export")
    path = check_target(output)  # a directory or a device: refused before any work
    prepared = prepare_models(model, weights=weights, conv=conv, input_size=input_size, num_classes=num_classes,
                              seed=seed, **hp)
    target = prepared.converted[0] if prepared.converted else prepared.original
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn((batch_size, *prepared.input_size), generator=gen)
    deployed, info = deploy_form(target.module, sample, portable=True)
    with torch.no_grad():
        reference = target.module(sample)
    notes = list(prepared.notes)
    predict, runtime = (_write_onnx if format == "onnx" else _write_torchscript)(deployed, sample, path)
    check = parity(reference, predict(sample))
    accuracy = None
    if evaluate and prepared.eval_data is not None:
        from falcon.conversion import accuracy as eager_accuracy

        images, labels = prepared.eval_data.tensors[:2]
        exported = int((predict(images).argmax(1) == labels).sum()) / int(labels.numel())
        accuracy = {"eager": float(eager_accuracy(target.module, prepared.eval_data)), "exported": exported,
                    "samples": int(labels.shape[0])}
    result = ExportResult(str(path), format, prepared.name, target.conv, dict(target.hparams), prepared.input_size,
                          info, check, runtime, path.stat().st_size, len(target.replaced), accuracy, notes)
    if not check.ok:
        raise FalconError(f"the exported {format} file does not compute what the model does ({check.describe()}); "
                          f"written anyway to {path}")
    return result
