"""im2col / col2im by the native kernel: chunk sizes, and the calls spread over threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from zsm.ops.dcn.geometry import Geom, image_strides, plan_chunks, position_strides, workspace
from zsm.ops.dcn.native import TILE, Kernel, NativeLib

# Column-matrix bytes per chunk: sampled, multiplied and (backward) scattered
# while in L2 (1 MB measured best on a 1 MB-L2 core: 17% faster than 4 MB);
# also bounds the extra memory of a call. With several threads every chunk
# costs a few fork/joins, and on a machine shared with other work each can
# wait a scheduler slice (ms) for a busy core: measured 2.3x a dense conv with
# one 132 MB chunk, 9.9x with 4 MB ones. So chunks are larger then, trading
# cache locality for far fewer joins.
CHUNK_BYTES = 1 << 20
# NHWC input (the GEMM writes output rows, columns @ W^T): 2 MB measured 3-6% faster
# than 1 MB and 4 MB for the whole deformable conv (compact and official shapes).
CHUNK_BYTES_NHWC = 2 << 20
CHUNK_BYTES_THREADED = 64 << 20
# bf16 the kernel's small GEMMs may read past a packed weight's last pair row
# (GEMM_W_PAD in csrc/dcn_simd.c)
_GEMM_W_PAD = 128

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """Worker threads for kernels built without OpenMP (created once, grown on demand)."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zsm-dcn")
            _pool_size = workers
        return _pool


def _run_tiles(lib: NativeLib, fn: Kernel, start: int, stop: int) -> None:
    """Call ``fn(t0=, t1=, nthreads=)`` on tiles ``range(start, stop)`` in parallel.

    An OpenMP build splits the range itself. Otherwise the range is cut into
    one piece per thread, run by plain Python threads (ctypes drops the GIL).
    """
    total = stop - start
    n = max(1, min(torch.get_num_threads(), total))
    if n == 1 or lib.openmp:
        fn(t0=start, t1=stop, nthreads=n)
        return
    bounds = [start + total * i // n for i in range(n + 1)]
    pool = _thread_pool(n - 1)
    futures = [pool.submit(fn, t0=bounds[i], t1=bounds[i + 1], nthreads=1) for i in range(1, n)]
    fn(t0=bounds[0], t1=bounds[1], nthreads=1)
    for f in futures:
        f.result()


def _run_parts(lib: NativeLib, fn: Kernel) -> list[Any]:
    """Call ``fn(part=, nparts=, nthreads=)`` for every part, in parallel; their results."""
    n = max(1, torch.get_num_threads())
    if n == 1 or lib.openmp:
        return [fn(part=0, nparts=1, nthreads=n)]
    pool = _thread_pool(n - 1)
    futures = [pool.submit(fn, part=i, nparts=n, nthreads=1) for i in range(1, n)]
    first = fn(part=0, nparts=n, nthreads=1)
    return [first, *(f.result() for f in futures)]


def fused_forward_bf16(
    lib: NativeLib,
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    wcols: torch.Tensor,
    bias: torch.Tensor | None,
    geo: Geom,
    out: torch.Tensor,
) -> bool:
    """``out`` (B*Ho*Wo, Cout) bf16 rows = the deformable conv of bf16 NHWC ``x``, by the
    fused native forward (``zsm_dcn_forward_bf16``); False (``out`` untouched) where it
    cannot run: no AVX512-BF16 here, ``Cg % 8``, ``Cout % 16``, or offsets or mask not
    NHWC. ``wcols`` (Cout, K) bf16 as :func:`~zsm.ops.dcn.geometry.weight_to_cols`."""
    cout = wcols.shape[0]
    ostrides, mstrides = position_strides(offset), position_strides(mask)
    if ostrides is None or mstrides is None or ostrides[1] != 1 or mstrides[1] != 1:
        return False
    if geo.cg % 8 or cout % 16 or geo.h * geo.w * geo.c >= 2**31 or not lib.set_simd():
        return False
    xsb, _, xsp = image_strides(x, geo)
    # W^T with each column pair's two bf16 adjacent: (K/2, Cout, 2)
    wp = wcols.reshape(cout, geo.k // 2, 2).transpose(0, 1).contiguous()
    b32 = bias.float().contiguous() if bias is not None else None  # alive until the call
    fn = lib.forward_bf16.bind(
        x=x, offset=offset, mask=mask, wp=wp, out=out, bias=b32,
        H=geo.h, W=geo.w, C=geo.c, G=geo.g, kh=geo.kh, kw=geo.kw, pad=geo.pad,
        Ho=geo.ho, Wo=geo.wo, Cout=cout, xsb=xsb, xsp=xsp,
        osb=ostrides[0], osc=ostrides[1], osp=ostrides[2],
        msb=mstrides[0], msc=mstrides[1], msp=mstrides[2], q0=0, q1=geo.b * geo.hwo,
    )  # fmt: skip
    return all(r == 1 for r in _run_parts(lib, fn))


def supports(lib: NativeLib, x_dtype: torch.dtype, cols_dtype: torch.dtype) -> bool:
    """Whether the kernel samples ``x_dtype`` input into ``cols_dtype`` columns."""
    return lib.im2col_for(x_dtype, cols_dtype) is not None


class NativeSampler:
    """im2col / col2im by the compiled kernel.

    ``x``: group-major (B, G, H, W, Cg), or NHWC (im2col only); float32, or
    bfloat16 for im2col into bfloat16 columns (``cols_dtype``, see
    :data:`~zsm.ops.dcn.native.IM2COL_VARIANTS`; col2im needs float32).
    ``offset`` and ``mask``, float32, in any layout :func:`position_strides`
    describes (col2im: NCHW, per-sample dense, ``offset`` possibly batch-strided).
    """

    def __init__(
        self,
        lib: NativeLib,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor,
        geo: Geom,
        cols_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.lib, self.geo = lib, geo
        self.ntiles = -(-geo.hwo // TILE)
        size = CHUNK_BYTES_NHWC if x.dim() == 4 else CHUNK_BYTES
        if torch.get_num_threads() > 1:
            size = CHUNK_BYTES_THREADED
        self.cols_dtype = cols_dtype
        row_bytes = geo.k * cols_dtype.itemsize
        self.chunks = plan_chunks(geo, max(1, size // row_bytes), TILE)
        im2col = lib.im2col_for(x.dtype, cols_dtype)
        if im2col is None:
            raise TypeError(f"the kernel has no im2col from {x.dtype} to {cols_dtype}")
        ostrides, mstrides = position_strides(offset), position_strides(mask)
        assert ostrides is not None and mstrides is not None
        xsb, xsg, xsp = image_strides(x, geo)
        dims = dict(
            H=geo.h, W=geo.w, C=geo.c, G=geo.g, kh=geo.kh, kw=geo.kw, pad=geo.pad,
            Ho=geo.ho, Wo=geo.wo,
        )  # fmt: skip
        self.x = x  # the workspace's dtype and device
        # Arguments fixed for the call (checked and converted once, here).
        self._im2col = im2col.bind(
            x=x, offset=offset, mask=mask, **dims, xsb=xsb, xsg=xsg, xsp=xsp,
            osb=ostrides[0], osc=ostrides[1], osp=ostrides[2],
            msb=mstrides[0], msc=mstrides[1], msp=mstrides[2],
        )  # fmt: skip
        # col2im reads float32 x: bound on the first call (a bf16 x samples forward only)
        self._col2im_args = dict(x=x, offset=offset, mask=mask, **dims, ostride=offset.stride(0))
        self._col2im: Kernel | None = None
        self._backward_args = dict(
            x=x, offset=offset, mask=mask, **dims, xsb=xsb, xsp=xsp,
            osb=ostrides[0], osc=ostrides[1], osp=ostrides[2],
            msb=mstrides[0], msc=mstrides[1], msp=mstrides[2],
        )  # fmt: skip
        self._backward: Kernel | None = None

    def im2col(self, i: int) -> torch.Tensor:
        """Columns of chunk ``i``, (rows, K): a scratch buffer, overwritten by the next call."""
        ch = self.chunks[i]
        cols = workspace("cols", ch.rows, self.geo.k, self.x, self.cols_dtype)
        t0 = ch.b0 * self.ntiles + ch.p0 // TILE
        t1 = (ch.b1 - 1) * self.ntiles + -(-ch.p1 // TILE)
        _run_tiles(self.lib, self._im2col.bind(cols=cols, q_base=ch.qa), t0, t1)
        return cols

    def col2im(
        self,
        i: int,
        gcols: torch.Tensor,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
    ) -> None:
        """Accumulate chunk ``i``'s input gradient into ``gx``; write its offset/mask gradients."""
        ch = self.chunks[i]
        if self._col2im is None:
            self._col2im = self.lib.col2im.bind(**self._col2im_args)
        fn = self._col2im.bind(gcols=gcols, gx=gx, goff=goff, gmask=gmask, q0=ch.qa, q1=ch.qb)
        _run_parts(self.lib, fn)

    def backward_bf16(
        self,
        i: int,
        gcols: torch.Tensor,
        cols: torch.Tensor | None,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
    ) -> None:
        """Chunk ``i`` of the fused bf16 NHWC backward pass (see ``zsm_dcn_backward_bf16``).

        ``gcols`` (rows, K) bf16 in; ``cols`` (rows, K) bf16 out (the columns again);
        ``gx`` float32 (B, H, W, C) accumulated; ``goff``, ``gmask`` float32, NCHW or
        NHWC (flat positions), written for the chunk's positions. Any of the last four may be None.
        """
        ch = self.chunks[i]
        fn = self._backward_call(gx, goff, gmask, q0=ch.qa, q1=ch.qb)
        _run_parts(self.lib, fn.bind(gcols=gcols, cols=cols, gout=None, wq=None, gw=None, Cout=0))

    def backward_bf16_fused(
        self,
        gout: torch.Tensor,
        wcols: torch.Tensor,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
        gw: torch.Tensor | None,
    ) -> bool:
        """The whole bf16 NHWC backward pass with its GEMMs inside, tile by tile: each
        tile's grad_col rows (``gout`` (B*Ho*Wo, Cout) bf16 @ ``wcols`` (Cout, K) bf16) and
        ``gw`` (float32 (Cout, K)) += its grad_out rows^T @ its columns, made while in
        cache; ``gx``, ``goff``, ``gmask`` as :meth:`backward_bf16`. False (nothing
        written) where it cannot run: no AVX512-BF16, odd Cout, or more threads than
        offset groups."""
        cout = wcols.shape[0]
        if cout % 2:
            return False
        # W with each pair of output channels' two bf16 adjacent: (Cout/2, K, 2), and
        # the kernel's reads past the last pair row (GEMM_W_PAD) in bounds
        wq = wcols.reshape(cout // 2, 2, self.geo.k).transpose(1, 2).reshape(-1)
        wq = torch.cat((wq, wq.new_zeros(_GEMM_W_PAD)))
        fn = self._backward_call(gx, goff, gmask, q0=0, q1=self.geo.b * self.geo.hwo)
        gout = gout.contiguous()  # rows of Cout (a reshaped NCHW gradient may be a view)
        fn = fn.bind(gcols=None, cols=None, gout=gout, wq=wq, gw=gw, Cout=cout)
        return all(r == 1 for r in _run_parts(self.lib, fn))

    def _backward_call(
        self,
        gx: torch.Tensor | None,
        goff: torch.Tensor | None,
        gmask: torch.Tensor | None,
        q0: int,
        q1: int,
    ) -> Kernel:
        gos = position_strides(goff) if goff is not None else (0, 0, 0)
        gms = position_strides(gmask) if gmask is not None else (0, 0, 0)
        assert gos is not None and gms is not None
        if self._backward is None:
            self._backward = self.lib.backward_bf16.bind(**self._backward_args)
        return self._backward.bind(
            gx=gx, goff=goff, gmask=gmask, q0=q0, q1=q1,
            gosb=gos[0], gosc=gos[1], gosp=gos[2], gmsb=gms[0], gmsc=gms[1], gmsp=gms[2],
        )  # fmt: skip
