"""The fused LRN for CUDA: Triton kernels for `alexnet.models.fused_lrn`'s ``alexnet::lrn`` operator, forward and
backward, each one pass over the input with the window's channels read through the cache.

One program handles ``BLOCK`` pixels of one (image, channel) pair: it loads the n channels of the window around it
(masked at the edge of its channel group, so windows never cross the paper's towers), sums their squares and
scales. The backward recomputes every denominator it needs from the input (n windows of n channels) instead of
reading saved ones: on a GPU the extra loads hit the L1 cache, a saved tensor would cost a write and a read of
4 bytes an element.

Nothing here runs at import: `kernels` compiles on first use. Without a GPU the kernels run, slowly, under Triton's
interpreter (``TRITON_INTERPRET=1``, set before this module first builds them): that is how the tests check them
against the reference formula on a CPU. `benchmarks/gpu_check.py` checks them on the GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

BLOCK = 256  # pixels per program: (B·C, ⌈H·W / BLOCK⌉) programs


@functools.cache
def available() -> bool:
    """Whether Triton can be imported here (it ships with torch's CUDA wheels on Linux)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def kernels() -> tuple[Any, Any]:
    """The forward and backward kernels, compiled (or, under ``TRITON_INTERPRET=1``, interpreted) on first use."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward(x_ptr, y_ptr, C, CG, P, sB, sC, sP, a, beta, k, N: tl.constexpr, BLOCK: tl.constexpr):
        bc = tl.program_id(0)
        b = (bc // C).to(tl.int64)
        c = bc % C
        ci = c % CG  # the channel's index within its group
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = p < P
        base = b * sB + p.to(tl.int64) * sP
        s = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(N):
            o = j - N // 2
            ok = (ci + o >= 0) & (ci + o < CG)
            v = tl.load(x_ptr + base + (c + o) * sC, mask=inside & ok, other=0.0).to(tl.float32)
            s += v * v
        xv = tl.load(x_ptr + base + c * sC, mask=inside, other=0.0).to(tl.float32)
        y = xv * tl.exp2(-beta * tl.log2(k + a * s))
        tl.store(y_ptr + base + c * sC, y.to(y_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def backward(g_ptr, x_ptr, gx_ptr, C, CG, P, sB, sC, sP, a, beta, k, N: tl.constexpr, BLOCK: tl.constexpr):
        # ∂L/∂x_i = g_i d_i^(-β) − 2aβ x_i Σ_{j ∈ window(i)} g_j x_j d_j^(-β-1), each d_j from its own window.
        bc = tl.program_id(0)
        b = (bc // C).to(tl.int64)
        c = bc % C
        ci = c % CG
        p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = p < P
        base = b * sB + p.to(tl.int64) * sP
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        own = tl.zeros([BLOCK], dtype=tl.float32)  # d_i^(-β)
        for j in tl.static_range(N):
            o = j - N // 2
            ok = inside & (ci + o >= 0) & (ci + o < CG)
            s = tl.zeros([BLOCK], dtype=tl.float32)
            for m in tl.static_range(N):
                om = o + m - N // 2
                okm = ok & (ci + om >= 0) & (ci + om < CG)
                v = tl.load(x_ptr + base + (c + om) * sC, mask=okm, other=0.0).to(tl.float32)
                s += v * v
            d = k + a * s
            scale = tl.exp2(-beta * tl.log2(d))
            xj = tl.load(x_ptr + base + (c + o) * sC, mask=ok, other=0.0).to(tl.float32)
            gj = tl.load(g_ptr + base + (c + o) * sC, mask=ok, other=0.0).to(tl.float32)
            acc += gj * xj * scale / d
            if o == 0:
                own = scale
        xv = tl.load(x_ptr + base + c * sC, mask=inside, other=0.0).to(tl.float32)
        gv = tl.load(g_ptr + base + c * sC, mask=inside, other=0.0).to(tl.float32)
        gx = gv * own - 2.0 * a * beta * xv * acc
        tl.store(gx_ptr + base + c * sC, gx.to(gx_ptr.dtype.element_ty), mask=inside)

    return forward, backward


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """The layout the kernels write: channels last if ``x`` is, else NCHW (the fake implementation uses it too)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _launch(kernel: Any, x: torch.Tensor, tensors: tuple[torch.Tensor, ...], *settings: Any) -> torch.Tensor:
    # tensors: the kernel's pointer arguments, all dense in x's layout (so x's strides address every one of them).
    size, a, beta, k, groups = settings
    b, c, h, w = x.shape
    # In both layouts a pixel's (h, w) position is one flat index at one stride: C (channels last) or 1 (NCHW).
    grid = (b * c, -(-h * w // BLOCK))
    kernel[grid](*tensors, c, c // groups, h * w, x.stride(0), x.stride(1), x.stride(3), a, beta, k, size, BLOCK)
    return tensors[-1]


def forward(x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """y = x · (k + a Σ_window x²)^(-β) per channel group, in ``memory_format(x)``."""
    x = x.contiguous(memory_format=memory_format(x))
    return _launch(kernels()[0], x, (x, torch.empty_like(x)), size, a, beta, k, groups)


def backward(
    grad: torch.Tensor, x: torch.Tensor, size: int, a: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """The gradient of `forward` with respect to ``x``, in ``memory_format(x)``."""
    fmt = memory_format(x)
    x = x.contiguous(memory_format=fmt)
    grad = grad.to(x.dtype).contiguous(memory_format=fmt)
    return _launch(kernels()[1], x, (grad, x, torch.empty_like(x)), size, a, beta, k, groups)
