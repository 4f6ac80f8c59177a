"""Kernel tests: run Triton kernels through the CPU interpreter when there is no GPU.

TRITON_INTERPRET is read when a kernel is decorated, i.e. when `creditrl.kernels.triton_kernels` is first
imported, so it is set here, before any test module of this directory imports it. With a GPU the kernels are
compiled and the interpreter is left off (the `gpu` tests then exercise the real kernels).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
