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

import dataclasses
import hashlib
import logging
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum
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
_LOCK = threading.Lock()
_SKIPPED = {"_parameters", "_modules", "training", "_non_persistent_buffers_set"}


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
    # Past the cap nothing is kept, so nothing is hashed: a 1M-item model is exported once.
    reusable = weights <= REUSE_MAX_BYTES
    key = fingerprint(module, example, input_names, dynamic_shapes, outputs) if reusable else None
    with _LOCK:
        cached = _REUSED.get(key) if key is not None else None
        if cached is not None:
            _REUSED.move_to_end(key)
    if cached is not None:
        model = serde.deserialize_model(onnx.load_from_string(cached))
        _write_weights(model, state)
        program = ONNXProgram(model, None)
    else:
        program = _trace(module, example, input_names, dynamic_shapes, outputs)
        if key is not None:
            traced = serde.serialize_model(program.model).SerializeToString()
            if len(traced) <= REUSE_MAX_BYTES:  # constants and non-persistent buffers too
                with _LOCK:
                    _REUSED[key] = traced
                    while len(_REUSED) > REUSE_ENTRIES:
                        _REUSED.popitem(last=False)
    program.optimize()
    _drop_debug_metadata(program.model)
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


def _drop_debug_metadata(model: Any) -> None:
    """The exporter's notes on every node (torch stack traces, module names) removed: nothing
    reads them, and inside an `If`'s branches each node carried a whole stack (about 8 KB a
    node: 1 MB for the short head's branches)."""
    from onnx_ir.traversal import RecursiveGraphIterator

    for node in RecursiveGraphIterator(model.graph):
        node.metadata_props.clear()


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


class Unreusable(Exception):
    """The module holds something the fingerprint cannot describe by value: trace afresh."""


def fingerprint(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
    outputs: tuple[str, ...],
) -> str | None:
    """What the traced graph depends on besides the weights' values, or None where that cannot
    be told (hooks, objects known only by address). A module's forward must read its settings
    from the module (instance or class attributes), not from module globals."""
    digest = hashlib.sha256()
    digest.update(repr((torch.__version__, tuple(input_names), outputs)).encode())
    try:
        for tensor, dims in zip(example, dynamic_shapes, strict=True):
            fixed = tuple(n if axis not in dims else None for axis, n in enumerate(tensor.shape))
            bounds = {a: (d.__name__, d.min, d.max) for a, d in dims.items()}
            digest.update(repr((str(tensor.dtype), fixed, bounds)).encode())
        state = module.state_dict()
        for name, sub in module.named_modules():
            digest.update(f"{name}|{type(sub).__module__}.{type(sub).__qualname__}".encode())
            for attr, value in sorted(vars(sub).items()):
                if "hook" in attr:
                    if value:  # a hook may change what forward computes
                        raise Unreusable(attr)
                elif attr == "_buffers":  # non-persistent buffers are constants of the graph
                    for key, buffer in value.items():
                        if f"{name}.{key}".lstrip(".") not in state:
                            _hash_value(digest, (key, buffer))
                elif attr not in _SKIPPED:
                    digest.update(attr.encode())
                    _hash_value(digest, value)
            for klass in type(sub).__mro__:  # class attributes forward may read
                if klass.__module__ in ("torch.nn.modules.module", "builtins"):
                    continue
                for attr, value in sorted(vars(klass).items()):
                    if (
                        not attr.startswith("__")
                        and not callable(value)
                        and not isinstance(value, property | staticmethod | classmethod)
                    ):
                        digest.update(f"{klass.__qualname__}.{attr}".encode())
                        _hash_value(digest, value)
        for name, tensor in state.items():
            digest.update(repr((name, tuple(tensor.shape), str(tensor.dtype))).encode())
    except Unreusable:
        return None
    return digest.hexdigest()


def _hash_value(digest: Any, value: Any) -> None:
    """Tensors and arrays by content (a constant baked into the graph), containers and
    dataclasses item by item, anything else by repr; an object known only by its address
    (which CPython reuses) or a module outside the tree is Unreusable."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"tensor{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, np.ndarray):
        digest.update(f"array{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, list | tuple):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for k, item in value.items():
            _hash_value(digest, k)
            _hash_value(digest, item)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}".encode())
        for f in dataclasses.fields(value):
            digest.update(f.name.encode())
            _hash_value(digest, getattr(value, f.name))
    elif isinstance(value, nn.Module):
        raise Unreusable("a module outside the module tree")
    elif value is None or isinstance(value, bool | int | float | complex | str | bytes | Enum):
        digest.update(f"{type(value).__qualname__}:{value!r}".encode())
    else:
        text = repr(value)
        if " at 0x" in text or "object at" in text:
            raise Unreusable(text)
        digest.update(f"{type(value).__module__}.{type(value).__qualname__}:{text}".encode())
