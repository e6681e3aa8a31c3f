"""The native DCN kernel's build and interface: warning-free C, one declaration, calls by name."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zsm.ops.dcn import native

SRC = Path(__file__).resolve().parents[1] / "src"

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler")


def _compile(tmp_path: Path, extra: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    src = native.write_sources(tmp_path)
    cmd = native.compile_command(native.compiler() or "cc", src, tmp_path / "k.so", extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@needs_cc
@pytest.mark.parametrize("variant", native.CFLAG_VARIANTS, ids=lambda v: " ".join(v) or "plain")
def test_kernel_compiles_without_warnings(tmp_path: Path, variant: tuple[str, ...]) -> None:
    """Every build variant: -Wall -Wextra -Werror, and nothing at all on stderr (not even notes)."""
    if _compile(tmp_path, variant).returncode != 0:
        pytest.skip(f"the compiler does not take {variant}")
    res = _compile(tmp_path, (*variant, "-Werror"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""


@needs_cc
def test_kernel_without_the_simd_loops_compiles_without_warnings(tmp_path: Path) -> None:
    """The build of a CPU without x86-64 SIMD (forced by -DZSM_NO_SIMD): portable loops only."""
    res = _compile(tmp_path, ("-DZSM_NO_SIMD", "-Werror"))
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == ""


@needs_cc
def test_a_table_that_disagrees_with_the_c_code_does_not_compile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C definitions take their parameters from the table: a renamed one is an error."""
    im2col = native.SIGNATURES[0]
    params = tuple(("xs_batch" if n == "xsb" else n, t) for n, t in im2col.params)
    renamed = native.Signature(im2col.name, params)
    monkeypatch.setattr(native, "SIGNATURES", (renamed, *native.SIGNATURES[1:]))
    res = _compile(tmp_path, ())
    assert res.returncode != 0
    assert "xsb" in res.stderr


def test_header_declares_tile_and_every_function() -> None:
    text = native.header()
    assert f"#define ZSM_DCN_TILE {native.TILE}" in text
    c_source = native.source()
    for sig in native.SIGNATURES:
        assert f"{sig.name}({sig.macro});" in text
        assert f"{sig.name}({sig.macro}) {{" in c_source  # the definition uses the table
    assert "int64_t xsb" in text and "float *gmask" in text


def _recording_kernel(sig: native.Signature) -> tuple[native.Kernel, list[tuple]]:
    calls: list[tuple] = []
    return native.Kernel(lambda *args: calls.append(args), sig), calls


SIG = native.Signature(
    "f", (("a", native.F32_IN), ("n", native.I64), ("b", native.F32_OUT_OR_NULL))
)
T32, T64 = torch.zeros(2), torch.zeros(2, dtype=torch.float64)


def test_kernel_calls_by_name_in_the_tables_order() -> None:
    kernel, calls = _recording_kernel(SIG)
    kernel(n=5, b=None, a=T32)
    kernel.bind(b=T32)(a=T32, n=7)
    assert calls == [(T32.data_ptr(), 5, None), (T32.data_ptr(), 7, T32.data_ptr())]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(a=T32, n=1), r"missing arguments \['b'\]"),
        (dict(a=T32, n=1, b=None, m=2), "no parameter 'm'"),
        (dict(a=None, n=1, b=None), "a must not be None"),
        (dict(a=T64, n=1, b=None), "a must be a float32 CPU tensor"),
    ],
    ids=["missing", "unknown", "null", "dtype"],
)
def test_kernel_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    kernel, calls = _recording_kernel(SIG)
    with pytest.raises(TypeError, match=message):
        kernel(**kwargs)
    assert not calls


def test_bf16_pointers_take_bf16_tensors_only() -> None:
    sig = native.Signature("g", (("x", native.BF16_IN), ("cols", native.BF16_OUT)))
    kernel, calls = _recording_kernel(sig)
    h = torch.zeros(2, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="x must be a bfloat16 CPU tensor"):
        kernel(x=T32, cols=h)
    kernel(x=h, cols=h)
    assert calls == [(h.data_ptr(), h.data_ptr())]
    assert "const uint16_t *x" in native.header()  # the bf16 im2col variants' parameters


def test_kernel_rejects_an_argument_given_twice() -> None:
    kernel, calls = _recording_kernel(SIG)
    with pytest.raises(TypeError, match="n is bound already"):
        kernel.bind(n=1)(a=T32, n=2, b=None)
    assert not calls


@pytest.mark.skipif(not native.native_available(), reason="no C compiler for the kernel")
def test_loaded_kernel_reports_openmp_and_binds_every_function() -> None:
    lib = native.load_native()
    assert lib is not None
    assert isinstance(lib.openmp, bool)
    assert lib.im2col.sig.name == "zsm_dcn_im2col" and lib.col2im.sig.name == "zsm_dcn_col2im"
    for (x_dtype, cols_dtype), name in native.IM2COL_VARIANTS.items():
        kernel = lib.im2col_for(x_dtype, cols_dtype)
        assert kernel is not None and kernel.sig.name == name
    assert lib.im2col_for(torch.bfloat16, torch.float32) is None  # bf16 input: bf16 columns


def test_the_dcn_imports_only_torch_torchvision_and_the_standard_library() -> None:
    # (zsm.ops.flow also uses OpenCV, for the optical flow: tests/test_layout.py)
    allowed = {"torch", "torchvision", "numpy", *sys.stdlib_module_names}
    for path in sorted((SRC / "zsm" / "ops" / "dcn").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                ok = name.split(".")[0] in allowed or name.startswith(("zsm.ops.", "__future__"))
                assert ok or name == "zsm.ops", f"{path.relative_to(SRC)} imports {name}"
