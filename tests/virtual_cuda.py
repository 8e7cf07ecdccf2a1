"""A virtual "cuda" device for CPU-only torch: real CPU arithmetic, CUDA's device rules.

FakeTensorMode can create tensors on `cuda` without a GPU and raises on a CPU/CUDA mix, but it has no data
(no `.item()`, `.tolist()`, `if (x < 1).any()`) and autograd aborts the process on a fake CUDA parameter (a
CPU build has no CUDA device guard). Training code reads data (the selectors' rankings, LayerDrop's
`drop.any()`, transcripts) and runs backward, so for it this mode keeps the data on the CPU and tracks which
tensors would be on the GPU:

- `.to("cuda")`, `.cuda()`, `module.to("cuda")` and every factory called with `device=<cuda>` give a tensor
  that is virtually on CUDA; `tensor.device` then reads `cuda:0`, so `device=x.device` follows it.
- Every op's result is on CUDA when an input is; an op mixing a CUDA tensor with a CPU tensor of one or more
  dimensions raises `DeviceMixError`, as CUDA does. CUDA's exceptions hold here too: CPU 0-dim tensors may join
  CUDA ops, copies go between devices, and advanced indexing (`x[idx]`, `x[idx] = v`) takes CPU indices.
- `.cpu()` / `.to("cpu")` give a CPU copy.

A tensor is tracked by its storage (views and `nn.Parameter`s share it); tracked storages are kept alive
while the mode runs, so a freed address is never reused by a CPU tensor.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)
#: ops that may take tensors of two devices on a GPU
MIXED_DEVICE_OPS = {aten.copy_.default, aten._to_copy.default, aten._foreach_copy_.default,
                    aten._local_scalar_dense.default}
#: ops whose result keeps the device it had (a copy into a CPU tensor stays on the CPU; a scalar is no tensor)
KEEP_DEVICE_OPS = {aten.copy_.default, aten._foreach_copy_.default, aten._local_scalar_dense.default}
#: advanced indexing: its `indices` (this argument) may stay on the CPU
INDEX_ARGUMENT = {aten.index.Tensor: 1, aten.index_put_.default: 1, aten.index_put.default: 1,
                  aten._index_put_impl_.default: 1}


class DeviceMixError(RuntimeError):
    pass


class VirtualCuda:
    """`with VirtualCuda() as vc:` runs the block with a virtual `cuda` device (see the module doc)."""

    def __init__(self):
        self._storages: dict[int, object] = {}  # data_ptr -> storage, kept alive
        self._function_mode = _FunctionMode(self)
        self._dispatch_mode = _DispatchMode(self)

    def __enter__(self):
        self._dispatch_mode.__enter__()
        self._function_mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._function_mode.__exit__(*exc)
        self._dispatch_mode.__exit__(*exc)
        return False

    # --- tracking ---------------------------------------------------------------------------------
    @staticmethod
    def _key(t: torch.Tensor) -> int | None:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            return None
        ptr = t.untyped_storage().data_ptr()
        return ptr or None  # an empty storage has no address: it carries no device information here

    def is_cuda(self, t) -> bool:
        key = self._key(t)
        return key is not None and key in self._storages

    def set_device(self, tree, cuda: bool) -> None:
        for t in pytree.tree_leaves(tree):
            key = self._key(t)
            if key is None:
                continue
            if cuda:
                self._storages[key] = t.untyped_storage()
            else:
                self._storages.pop(key, None)


def _is_cuda_device(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class _FunctionMode(TorchFunctionMode):
    """Device arguments and `tensor.device`: what Python code sees of the virtual device."""

    def __init__(self, vc: VirtualCuda):
        super().__init__()
        self.vc = vc

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        vc = self.vc
        if func == torch.Tensor.device.__get__:
            return CUDA if vc.is_cuda(args[0]) else func(*args, **kwargs)
        if func == torch.Tensor.is_cuda.__get__:
            return vc.is_cuda(args[0])
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if _is_cuda_device(kwargs.get("device")):  # a factory (or a module constructor's factories) on cuda
            kwargs["device"] = "cpu"
            out = func(*args, **kwargs)
            vc.set_device(out, True)
            return out
        return func(*args, **kwargs)

    def _move(self, func, args, kwargs):
        tensor, rest = args[0], args[1:]
        if func is torch.Tensor.cuda:
            target, rest, kwargs = CUDA, (), {}
        elif func is torch.Tensor.cpu:
            target = torch.device("cpu")
        else:
            if rest and isinstance(rest[0], torch.Tensor):  # .to(other): other's device and dtype
                other = rest[0]
                rest, kwargs = (), {"dtype": other.dtype, **kwargs}
                target = CUDA if self.vc.is_cuda(other) else torch.device("cpu")
            else:
                target, dtype, _, _ = torch._C._nn._parse_to(*rest, **kwargs)
                rest, kwargs = (), ({"dtype": dtype} if dtype is not None else {})
        out = torch.Tensor.to(tensor, *rest, **kwargs) if (rest or kwargs) else tensor
        if target is None or (target.type == "cuda") == self.vc.is_cuda(tensor):
            return out
        if out is tensor or out.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr():
            out = out.clone()
        self.vc.set_device(out, target.type == "cuda")
        return out


class _DispatchMode(TorchDispatchMode):
    """Every op, backward included: refuse a CPU/CUDA mix, put results on CUDA when an input is."""

    def __init__(self, vc: VirtualCuda):
        super().__init__()
        self.vc = vc

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_cuda = [t for t in tensors if self.vc.is_cuda(t)]
        if func in INDEX_ARGUMENT:
            skip = INDEX_ARGUMENT[func]
            tensors = [t for t in pytree.tree_leaves((args[:skip], args[skip + 1:], kwargs))
                       if isinstance(t, torch.Tensor)]
        if on_cuda and func not in MIXED_DEVICE_OPS:
            on_cpu = [t for t in tensors if not self.vc.is_cuda(t) and t.dim() > 0 and t.numel() > 0]
            if on_cpu:
                shapes = ", ".join(str(tuple(t.shape)) for t in on_cpu)
                raise DeviceMixError(f"{func}: CPU tensor(s) of shape {shapes} meet CUDA tensor(s) of shape "
                                     f"{tuple(on_cuda[0].shape)}: expected all tensors to be on the same device")
        out = func(*args, **kwargs)
        if func in KEEP_DEVICE_OPS:
            return out
        if func is aten._to_copy.default and kwargs.get("device") is not None:
            return out  # an explicit device here is the CPU (a move to CUDA is handled in _FunctionMode)
        if on_cuda:
            self.vc.set_device(out, True)
        return out
