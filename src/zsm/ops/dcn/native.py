"""The native C kernel: its typed interface, build and loading.

The kernel (``csrc/dcn_cpu.c``, shipped as package data) is compiled on first
use with the system C compiler into ``~/.cache/zsm/kernels``
(``$ZSM_CACHE_DIR/kernels``), keyed by its source, the flags and the CPU, and
loaded with :mod:`ctypes`. OpenMP when the compiler has it (the same
``libgomp`` torch has loaded, so one thread pool). Optional: any failure (no
compiler, an odd platform) logs one warning and the callers use the pure
path; ``ZSM_DCN_NATIVE=0`` disables it silently. ``csrc/dcn_simd.c``
(included by the C file) holds AVX-512 (BF16) forms of the inner loops,
compiled by function attributes and used where the CPU has them;
``ZSM_DCN_SIMD=0`` (or :meth:`NativeLib.set_simd`) keeps the portable ones, and
``set_simd(True, pairs=False)`` the AVX-512 forward of before, vectorised over a
tile's positions (for comparisons: ``benchmarks/dcn_simd.py``).

The interface is declared once, in :data:`SIGNATURES`: each parameter's name
and C type. From it come the ctypes argument types and a generated header
(``zsm_dcn_api.h``) holding ``TILE`` and each function's parameter list,
which the C file's definitions use, so the C compiler sees the very same
declaration. Calls go through :class:`Kernel`, by keyword only: a swapped or
missing argument is an error, not corrupted memory.

ctypes rather than a ``torch.library`` op built by ``torch.utils.cpp_extension``
(measured on the 2-core development VM): such an op compiles against torch's
headers in 6.6-7.8 s when trivial (50-55 s with ``torch/extension.h``), this
whole kernel in 0.9 s; and a ``torch.ops`` call with these arguments costs
5.0 us, a :class:`Kernel` call 5.1 us (a bare positional ctypes call 2.9 us).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Output positions per tile of the kernel; the C side gets it from the generated header.
TILE = 64

HEADER_NAME = "zsm_dcn_api.h"
SOURCE_NAME = "dcn_cpu.c"
SIMD_SOURCE_NAME = "dcn_simd.c"  # the AVX-512 loops, #included by dcn_cpu.c


@dataclass(frozen=True)
class CType:
    """A C parameter type: its spelling, its ctypes type, and how Python values map to it."""

    c: str
    ctype: Any  # a ctypes type, or None for void
    pointer: bool = False  # a tensor's data (its data_ptr) is passed
    nullable: bool = False  # None is allowed (a NULL pointer)
    dtype: torch.dtype = torch.float32  # a pointer's tensor dtype

    def declare(self, name: str) -> str:
        return f"{self.c}{name}" if self.c.endswith("*") else f"{self.c} {name}"


F32_IN = CType("const float *", ctypes.c_void_p, pointer=True)
F32_IN_OR_NULL = CType("const float *", ctypes.c_void_p, pointer=True, nullable=True)
F32_OUT = CType("float *", ctypes.c_void_p, pointer=True)
F32_OUT_OR_NULL = CType("float *", ctypes.c_void_p, pointer=True, nullable=True)
BF16_IN = CType("const uint16_t *", ctypes.c_void_p, pointer=True, dtype=torch.bfloat16)
BF16_IN_OR_NULL = CType(
    "const uint16_t *", ctypes.c_void_p, pointer=True, nullable=True, dtype=torch.bfloat16
)
BF16_OUT = CType("uint16_t *", ctypes.c_void_p, pointer=True, dtype=torch.bfloat16)
BF16_OUT_OR_NULL = CType(
    "uint16_t *", ctypes.c_void_p, pointer=True, nullable=True, dtype=torch.bfloat16
)
I64 = CType("int64_t", ctypes.c_int64)
F32 = CType("float", ctypes.c_float)
INT = CType("int", ctypes.c_int)
VOID = CType("void", None)


@dataclass(frozen=True)
class Signature:
    """One exported C function: name, parameters in C order, result type."""

    name: str
    params: tuple[tuple[str, CType], ...]
    restype: CType = VOID

    @property
    def macro(self) -> str:
        """The header macro holding the parameter list, e.g. ``ZSM_DCN_IM2COL_PARAMS``."""
        return f"{self.name.upper()}_PARAMS"

    def header(self) -> str:
        decls = [t.declare(n) for n, t in self.params] or ["void"]
        body = ", \\\n    ".join(decls)
        return f"#define {self.macro} \\\n    {body}\n{self.restype.c} {self.name}({self.macro});\n"


def _each(names: str, ctype: CType) -> tuple[tuple[str, CType], ...]:
    return tuple((name, ctype) for name in names.split())


_DIMS = "H W C G kh kw pad Ho Wo"  # sizes of one call; C counts all input channels


def _im2col(name: str, x: CType, cols: CType) -> Signature:
    return Signature(
        name,
        (
            ("x", x),
            *_each("offset mask", F32_IN),
            ("cols", cols),
            *_each(_DIMS, I64),
            *_each("xsb xsg xsp osb osc osp msb msc msp q_base t0 t1", I64),
            *_each("nthreads", INT),
        ),
    )


# (x dtype, columns dtype) -> the im2col taking them; the sampling is float32 in each.
IM2COL_VARIANTS = {
    (torch.float32, torch.float32): "zsm_dcn_im2col",
    (torch.bfloat16, torch.bfloat16): "zsm_dcn_im2col_bf16",  # bf16 activations, bf16 GEMM
    (torch.float32, torch.bfloat16): "zsm_dcn_im2col_f32_bf16",  # the backward's bf16 GEMM
}

SIGNATURES = (
    # im2col of tiles [t0, t1) into ``cols`` (its rows from q_base on); the strides
    # (x: batch, group, pixel; offset and mask: batch, channel, position): see the C file.
    _im2col("zsm_dcn_im2col", F32_IN, F32_OUT),
    # col2im of rows [q0, q1): part ``part`` of ``nparts``, or all of them (OpenMP).
    Signature(
        "zsm_dcn_col2im",
        (
            *_each("x offset mask gcols", F32_IN),
            *_each("gx goff gmask", F32_OUT_OR_NULL),
            *_each(_DIMS, I64),
            *_each("ostride q0 q1", I64),
            *_each("part nparts nthreads", INT),
        ),
    ),
    Signature("zsm_dcn_openmp", (), INT),
    # The SIMD level in use (0: the portable loops) after a request (0 off, 1 on, -1 as is).
    Signature("zsm_dcn_simd", (("request", INT),), INT),
    _im2col("zsm_dcn_im2col_bf16", BF16_IN, BF16_OUT),
    _im2col("zsm_dcn_im2col_f32_bf16", F32_IN, BF16_OUT),
    # The backward pass of bf16 NHWC input in one pass over the corners: the columns
    # again (for grad_W), gx (float32 NHWC) += col2im(gcols), the offset and mask
    # gradients (float32 NCHW); rows [q0, q1), part ``part`` of ``nparts`` or all (OpenMP).
    # The fused forward pass of bf16 NHWC input and NHWC offsets and mask: out (rows
    # [q0, q1) of (B*Ho*Wo, Cout), bf16) = columns @ the packed weights wp ((K/2, Cout, 2)
    # bf16) + bias, the columns sampled and multiplied a few rows at a time; part
    # ``part`` of ``nparts`` or all (OpenMP). 1 if it ran, 0 where it cannot (see the C file).
    Signature(
        "zsm_dcn_forward_bf16",
        (
            ("x", BF16_IN),
            *_each("offset mask", F32_IN),
            ("wp", BF16_IN),
            ("bias", F32_IN_OR_NULL),
            ("out", BF16_OUT),
            *_each(_DIMS + " Cout", I64),
            *_each("xsb xsp osb osc osp msb msc msp q0 q1", I64),
            *_each("part nparts nthreads", INT),
        ),
        INT,
    ),
    # The offsets (base + r tanh(o), or o where r is 0) and mask (sigmoid) of a deformable
    # conv from its offset/mask conv's NHWC rows of C3 channels (P2 offsets first), bf16
    # or float32 in, float32 out; rows [q0, q1) of B*HW. 1 if it ran, 0 if it cannot.
    Signature(
        "zsm_dcn_offsets_mask",
        (
            ("in_f32", F32_IN_OR_NULL),
            ("in_bf16", BF16_IN_OR_NULL),
            ("base", F32_IN_OR_NULL),
            ("out", F32_OUT),
            *_each("HW C3 P2 bsb bsc bsp q0 q1", I64),
            ("r", F32),
            ("nthreads", INT),
        ),
        INT,
    ),
    # An NHWC image batch (bf16 or float32) warped along a flow (N, 2, H, W) in pixels:
    # bilinear, border padding, as zsm.ops.warp.warp. 1 if it ran, 0 if it cannot.
    Signature(
        "zsm_warp_nhwc",
        (
            ("in_f32", F32_IN_OR_NULL),
            ("in_bf16", BF16_IN_OR_NULL),
            ("flow", F32_IN),
            *_each("fsb fsc fsp", I64),
            ("out_f32", F32_OUT_OR_NULL),
            ("out_bf16", BF16_OUT_OR_NULL),
            *_each("B H W C", I64),
            ("nthreads", INT),
        ),
        INT,
    ),
    # Fused (gout given): grad_col = gout @ W (wq: packed (Cout/2, K, 2)) and gw (float32
    # (Cout, K)) += gout^T @ columns, tile by tile, instead of gcols and cols. 1 if it
    # ran, 0 where the fused form cannot (see the C file).
    Signature(
        "zsm_dcn_backward_bf16",
        (
            ("x", BF16_IN),
            *_each("offset mask", F32_IN),
            ("gcols", BF16_IN_OR_NULL),
            ("cols", BF16_OUT_OR_NULL),
            *_each("gx goff gmask", F32_OUT_OR_NULL),
            *_each("gout wq", BF16_IN_OR_NULL),
            ("gw", F32_OUT_OR_NULL),
            *_each(_DIMS + " Cout", I64),
            *_each("xsb xsp osb osc osp msb msc msp", I64),
            *_each("gosb gosc gosp gmsb gmsc gmsp q0 q1", I64),
            *_each("part nparts nthreads", INT),
        ),
        INT,
    ),
)


def header() -> str:
    """``zsm_dcn_api.h``: TILE and the exported functions' parameter lists, from the table."""
    parts = [
        "/* Generated from zsm/ops/dcn/native.py (TILE, SIGNATURES) by the build: do not edit. */",
        "#ifndef ZSM_DCN_API_H\n#define ZSM_DCN_API_H\n#include <stdint.h>\n",
        f"#define ZSM_DCN_TILE {TILE}\n",
        *(sig.header() for sig in SIGNATURES),
        "#endif\n",
    ]
    return "\n".join(parts)


def source(name: str = SOURCE_NAME) -> str:
    return (resources.files(__package__) / "csrc" / name).read_text()


def write_sources(directory: Path) -> Path:
    """The C file and its generated header in ``directory``; returns the C file's path."""
    (directory / HEADER_NAME).write_text(header())
    (directory / SIMD_SOURCE_NAME).write_text(source(SIMD_SOURCE_NAME))
    src = directory / SOURCE_NAME
    src.write_text(source())
    return src


_UNSET = object()  # a parameter not given (yet)


class Kernel:
    """One C function, called by keyword: ``kernel(x=..., H=..., ...)``, or ``bind`` some first.

    Every parameter is given exactly once, by name; pointer parameters take a
    CPU tensor of the parameter's dtype (float32 or bfloat16; None where the C
    side accepts NULL) and pass its ``data_ptr()``; ctypes checks the
    integers. A sampler binds the call's fixed arguments once and each
    chunk's few others per call: about 2 us more than a bare positional
    ctypes call (measured).
    """

    __slots__ = ("_args", "_fn", "_free", "_index", "_types", "sig")

    def __init__(self, fn: Any, sig: Signature) -> None:
        self._fn, self.sig = fn, sig
        self._types = dict(sig.params)
        self._index = {name: i for i, (name, _) in enumerate(sig.params)}
        # The positional arguments, the bound ones in place: a call fills the others.
        self._args: list[Any] = [_UNSET] * len(sig.params)
        self._free = len(sig.params)

    def _convert(self, name: str, value: Any) -> Any:
        i = self._index.get(name)
        if i is None:
            raise TypeError(f"{self.sig.name}() has no parameter {name!r}")
        if self._args[i] is not _UNSET:
            raise TypeError(f"{self.sig.name}(): {name} is bound already")
        ctype = self._types[name]
        if not ctype.pointer:
            return value
        if value is None:
            if not ctype.nullable:
                raise TypeError(f"{self.sig.name}(): {name} must not be None")
            return None
        if value.dtype is not ctype.dtype or not value.is_cpu:
            dtype = str(ctype.dtype).removeprefix("torch.")
            raise TypeError(f"{self.sig.name}(): {name} must be a {dtype} CPU tensor")
        return value.data_ptr()

    def _fill(self, kwargs: dict[str, Any]) -> list[Any]:
        args = self._args.copy()
        for name, value in kwargs.items():
            arg = self._convert(name, value)  # checks the name first
            args[self._index[name]] = arg
        return args

    def bind(self, **kwargs: Any) -> Kernel:
        """The same function with these arguments fixed (checked and converted once, here)."""
        bound = Kernel.__new__(Kernel)
        for slot in Kernel.__slots__:
            setattr(bound, slot, getattr(self, slot))
        bound._args = self._fill(kwargs)
        bound._free = self._free - len(kwargs)
        return bound

    def __call__(self, **kwargs: Any) -> Any:
        args = self._fill(kwargs)
        if len(kwargs) != self._free:  # names are unique and none was bound: some are missing
            params = zip(self.sig.params, args, strict=True)
            missing = [name for (name, _), arg in params if arg is _UNSET]
            raise TypeError(f"{self.sig.name}(): missing arguments {missing}")
        return self._fn(*args)


@dataclass
class NativeLib:
    """The loaded kernel: ``im2col`` and ``col2im``; ``openmp`` if they split their loops.

    ``im2col`` is float32 -> float32; :meth:`im2col_for` gives every variant.
    ``backward_bf16``: the fused backward pass of bf16 NHWC input, ``forward_bf16`` its
    fused forward pass (sampling and GEMM together, AVX512-BF16 only). ``simd``: the
    SIMD level in use after a request (:meth:`set_simd`).
    """

    im2col: Kernel
    col2im: Kernel
    openmp: bool
    variants: dict[tuple[torch.dtype, torch.dtype], Kernel]
    backward_bf16: Kernel
    simd: Kernel
    forward_bf16: Kernel
    offsets_mask: Kernel
    warp_nhwc: Kernel

    def set_simd(self, on: bool | None = None, *, pairs: bool = True) -> int:
        """Switch the AVX-512 loops on (where the CPU has them) or off; the level in use.

        ``pairs=False`` (for comparisons) runs the SIMD forward of NHWC offsets and mask
        tile by tile, vectorised over positions, as before the per-position form.
        """
        request = -1 if on is None else (1 if pairs else 2) if on else 0
        return int(self.simd(request=request))

    def im2col_for(self, x_dtype: torch.dtype, cols_dtype: torch.dtype) -> Kernel | None:
        """The im2col reading ``x_dtype`` and writing ``cols_dtype`` (None: there is none)."""
        return self.variants.get((x_dtype, cols_dtype))


def _bind(lib: ctypes.CDLL, sig: Signature) -> Kernel:
    fn = getattr(lib, sig.name)
    fn.argtypes = [t.ctype for _, t in sig.params]
    fn.restype = sig.restype.ctype
    return Kernel(fn, sig)


def _cache_dir() -> Path:
    """``$ZSM_CACHE_DIR/kernels``, else ``$XDG_CACHE_HOME/zsm/kernels`` (``~/.cache``)."""
    if os.environ.get("ZSM_CACHE_DIR"):
        return Path(os.environ["ZSM_CACHE_DIR"]) / "kernels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zsm" / "kernels"


def _cpu_signature() -> str:
    """What the compiled code depends on (-march=native): ISA flags where Linux tells them."""
    parts = [platform.machine(), platform.system()]
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                parts.append(line)
                break
    except OSError:
        pass
    return "\n".join(parts)


# -fno-trapping-math lets gcc vectorise floorf (no FP exceptions are used);
# results are IEEE as without it. Warnings on (the source is kept clean of
# them, tests/test_dcn_native.py builds it with -Werror) but not errors: a
# newer compiler's new warning must not cost a user the kernel. Added when the
# compiler takes them: -march=native (AVX for the 8-float rows) and -fopenmp
# (libgomp.so.1, which resolves to the copy torch has already loaded, so both
# share one pool of threads instead of spinning against each other).
CFLAGS = ("-O3", "-std=gnu99", "-fPIC", "-shared", "-fno-trapping-math", "-Wall", "-Wextra")
CFLAG_VARIANTS = (("-march=native", "-fopenmp"), ("-fopenmp",), ("-march=native",), ())


def compiler() -> str | None:
    """``$CC``, else the first of cc, gcc, clang on the PATH."""
    found = (shutil.which(name) for name in ("cc", "gcc", "clang"))
    return os.environ.get("CC") or next((path for path in found if path), None)


def compile_command(cc: str, src: Path, out: Path, extra: tuple[str, ...]) -> list[str]:
    return [cc, *CFLAGS, *extra, str(src), "-o", str(out), "-lm"]


def _compile(path: Path) -> None:
    """Compile the kernel to ``path`` atomically (concurrent processes may race)."""
    cc = compiler()
    if not cc:
        raise RuntimeError("no C compiler found")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        src = write_sources(Path(tmp))
        out = Path(tmp) / path.name
        errors = []
        # Best first; a compiler that refuses an option gets the next variant.
        for extra in CFLAG_VARIANTS:
            cmd = compile_command(cc, src, out, extra)
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if res.returncode == 0:
                os.replace(out, path)
                return
            errors.append(res.stderr.strip()[-500:])
        raise RuntimeError("C compiler failed: " + " | ".join(errors))


def _disabled() -> bool:
    return os.environ.get("ZSM_DCN_NATIVE", "1").strip().lower() in ("0", "false", "no", "off")


def _simd_wanted() -> bool:
    """``ZSM_DCN_SIMD=0`` keeps the kernel to its portable loops (no AVX-512)."""
    return os.environ.get("ZSM_DCN_SIMD", "1").strip().lower() not in ("0", "false", "no", "off")


_lock = threading.Lock()
_native_lib: NativeLib | None = None
_native_tried = False


def load_native() -> NativeLib | None:
    """The compiled kernel, building it on first use; ``None`` if unavailable or disabled."""
    global _native_lib, _native_tried
    if _disabled():
        return None
    if _native_tried:
        return _native_lib
    with _lock:
        if _native_tried:
            return _native_lib
        try:
            text = source() + source(SIMD_SOURCE_NAME) + header()
            text += repr((CFLAGS, CFLAG_VARIANTS)) + _cpu_signature()
            key = hashlib.sha256(text.encode()).hexdigest()[:16]
            path = _cache_dir() / f"zsm_dcn_{key}.so"
            if not path.is_file():
                _compile(path)
            lib = ctypes.CDLL(str(path))
            fns = {sig.name: _bind(lib, sig) for sig in SIGNATURES}
            openmp = bool(fns["zsm_dcn_openmp"]())
            variants = {dtypes: fns[name] for dtypes, name in IM2COL_VARIANTS.items()}
            _native_lib = NativeLib(
                fns["zsm_dcn_im2col"],
                fns["zsm_dcn_col2im"],
                openmp,
                variants,
                fns["zsm_dcn_backward_bf16"],
                fns["zsm_dcn_simd"],
                fns["zsm_dcn_forward_bf16"],
                fns["zsm_dcn_offsets_mask"],
                fns["zsm_warp_nhwc"],
            )
            if not _simd_wanted():
                _native_lib.set_simd(False)
        except Exception as exc:  # any failure: the callers fall back to the pure path
            log.warning(
                "zsm: native deformable-conv kernel unavailable (%s); using PyTorch ops (slower)",
                exc,
            )
            _native_lib = None
        _native_tried = True
    return _native_lib


def native_available() -> bool:
    """Whether the compiled kernel is (or can be made) available here."""
    return load_native() is not None
