"""A module as ONNX graph files, with the traced graph reused for the same structure.

torch's dynamo exporter spends ~10 s per call (capture, decompositions, translation) on a
structure that only changes when the model's options or sizes do: a retraining run, the
experiments' per-seed bundles and the test suite export the same structure with new weights
again and again. So the unoptimised graph is kept per structure (a fingerprint of every
submodule's type, non-tensor attributes, constant tensors' contents and the weights' names,
shapes and dtypes) and a later export of that structure writes its own weights into a copy
before the one optimisation pass both paths share. Every export is still checked against
PyTorch by the caller's parity test.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

# Protobuf caps one file at 2 GB: above this many bytes of weights the graph keeps them in
# `model.onnx.data` beside it (the bundle carries and checksums both).
EXTERNAL_DATA_ABOVE = 1 << 30
# Graphs kept for reuse (their weights included), and the largest kept: a 1M-item model is
# exported once per process, so only small and mid-sized structures are worth the memory.
REUSE_ENTRIES = 4
REUSE_MAX_BYTES = 256 << 20

_REUSED: OrderedDict[str, bytes] = OrderedDict()  # fingerprint -> unoptimised ModelProto
_SKIPPED = {"_parameters", "_buffers", "_modules", "training", "_non_persistent_buffers_set"}


def to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
    outputs: tuple[str, ...] = ("scores",),
    external_above: int = EXTERNAL_DATA_ABOVE,
) -> dict[str, bytes]:
    """The graph as bundle files: `model.onnx`, and `model.onnx.data` when the weights pass
    `external_above` bytes."""
    from onnx_ir import serde
    from torch.onnx._internal.exporter._onnx_program import ONNXProgram

    module = module.eval()
    state = module.state_dict()
    weights = sum(t.numel() * t.element_size() for t in state.values())
    key = fingerprint(module, example, input_names, dynamic_shapes, outputs)
    cached = _REUSED.get(key)
    if cached is not None:
        _REUSED.move_to_end(key)
        model = serde.deserialize_model(onnx.load_from_string(cached))
        _write_weights(model, state)
        program = ONNXProgram(model, None)
    else:
        program = _trace(module, example, input_names, dynamic_shapes, outputs)
        if weights <= REUSE_MAX_BYTES:
            _REUSED[key] = serde.serialize_model(program.model).SerializeToString()
            while len(_REUSED) > REUSE_ENTRIES:
                _REUSED.popitem(last=False)
    program.optimize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        program.save(str(path), external_data=weights > external_above)
        files = {"model.onnx": path.read_bytes()}
        data = path.with_name("model.onnx.data")
        if data.exists():
            files["model.onnx.data"] = data.read_bytes()
        return files


def _trace(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
    outputs: tuple[str, ...],
) -> Any:
    """torch's exporter, unoptimised (the caller optimises, as for a reused graph)."""
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        quiet.setLevel(logging.ERROR)  # and its notes on torchvision ops it skips
        try:
            return torch.onnx.export(
                module,
                example,
                input_names=list(input_names),
                output_names=list(outputs),
                dynamic_shapes=dynamic_shapes,
                dynamo=True,
                optimize=False,
                verbose=False,
            )
        finally:
            quiet.setLevel(level)


def _write_weights(model: Any, state: dict[str, torch.Tensor]) -> None:
    """The module's weights into a reused graph's initializers, by name. Every initializer
    must be one of them or a constant the fingerprint covers; a weight the graph lacks is one
    the forward pass never reads (the tracer drops those)."""
    from torch.onnx._internal.exporter._core import TorchTensor

    for name, value in model.graph.initializers.items():
        if name in state:
            expected = tuple(state[name].shape)
            if tuple(value.shape.dims) != expected:
                raise ValueError(f"reused graph: {name} is {value.shape}, not {expected}")
            value.const_value = TorchTensor(state[name].detach().contiguous(), name)


def fingerprint(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
    outputs: tuple[str, ...],
) -> str:
    """What the traced graph depends on besides the weights' values."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        digest.update(_describe(value).encode())

    add((torch.__version__, tuple(input_names), outputs))
    for tensor, dims in zip(example, dynamic_shapes, strict=True):
        fixed = tuple(n if axis not in dims else None for axis, n in enumerate(tensor.shape))
        add((str(tensor.dtype), fixed))
    for name, sub in module.named_modules():
        add((name, type(sub).__module__, type(sub).__qualname__))
        for attr, value in sorted(vars(sub).items()):
            if attr not in _SKIPPED and "hook" not in attr:
                add(attr)
                _hash_value(digest, value)
    for name, tensor in module.state_dict().items():
        add((name, tuple(tensor.shape), str(tensor.dtype)))
    return digest.hexdigest()


def _hash_value(digest: Any, value: Any) -> None:
    """Tensors and arrays by content (a constant baked into the graph), containers item by
    item, anything else by repr (an object without one names its address: never reused)."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        digest.update(f"{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for k, item in value.items():
            digest.update(repr(k).encode())
            _hash_value(digest, item)
    elif isinstance(value, nn.Module):
        digest.update(f"module {id(value)}".encode())  # covered by named_modules unless shared
    else:
        digest.update(_describe(value).encode())


def _describe(value: Any) -> str:
    return f"{type(value).__qualname__}:{value!r}"
