"""GPU weight-sync transports (architecture.md §2.3). CUDA only; tests are marked `gpu`.

cuda_ipc (colocated): the learner rank copies a bucket into one contiguous GPU buffer and shares it by a
CUDA IPC handle (`torch.multiprocessing.reductions.reduce_tensor`); the rollout side (same GPU, another
process) rebuilds views and clones them out of the buffer (verl#6454: never keep views of a reused bucket).
The learner keeps the buffer alive until the next sync.
"""

from __future__ import annotations

from torch import Tensor


class CudaIpcTransport:
    name = "cuda_ipc"

    def __init__(self):
        self._alive: list[Tensor] = []  # buffers shared by handle: freed only at the next sync

    def pack(self, bucket: dict[str, Tensor]) -> dict:
        import torch
        from torch.multiprocessing.reductions import reduce_tensor

        if not bucket:
            return {"buffer": None, "meta": []}
        device = next(iter(bucket.values())).device
        if device.type != "cuda":
            raise ValueError("cuda_ipc transport needs CUDA tensors; use object_store on CPU")
        meta, offset = [], 0
        flat = []
        for name, t in bucket.items():
            b = t.detach().contiguous().view(-1).view(torch.uint8)
            meta.append((name, tuple(t.shape), t.dtype, offset, b.numel()))
            flat.append(b)
            offset += b.numel()
        buffer = torch.cat(flat)
        self._alive.append(buffer)
        return {"buffer": reduce_tensor(buffer), "meta": meta}

    def release(self) -> None:
        self._alive.clear()

    def unpack(self, handle: dict) -> dict[str, Tensor]:
        if handle["buffer"] is None:
            return {}
        rebuild, args = handle["buffer"]
        buffer = rebuild(*args)
        # clone the bytes, then view: an offset into the buffer is not aligned for every dtype
        return {name: buffer[off: off + n].clone().view(dtype).view(shape)
                for name, shape, dtype, off, n in handle["meta"]}
