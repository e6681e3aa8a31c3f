"""The package's shape: which layer may import which, and small modules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "zsm"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# Weight files and their registry sit beside the network (as torchvision's do): they also
# read safetensors and raise the package's errors.
WEIGHT_IO = {"weights.py", "registry.py"}


def _imports(path: Path) -> set[str]:
    """Top-level names of everything ``path`` imports (``zsm.x.y`` kept whole)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _root(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", sorted((SRC / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_only_torch_and_themselves(path: Path) -> None:
    allowed = {"torch", "torchvision"} | ({"safetensors"} if path.name in WEIGHT_IO else set())
    for name in _imports(path):
        if _root(name) == "zsm":
            ours = ("zsm.models", "zsm.ops.dcn", "zsm.ops.warp")  # not ops.flow (OpenCV)
            ours += ("zsm.errors", "zsm.atomic") if path.name in WEIGHT_IO else ()
            assert name.startswith(ours), f"{path.name} imports {name}"
        else:
            assert _root(name) in STDLIB | allowed, f"{path.name} imports {name}"


def test_ops_import_only_torch_and_themselves() -> None:
    for path in sorted((SRC / "ops").rglob("*.py")) if (SRC / "ops").is_dir() else []:
        # OpenCV for the optical flow estimator (DIS) alone: the network stays pure torch.
        extra = {"cv2"} if path.name == "flow.py" else set()
        for name in _imports(path):
            root = _root(name)
            assert root in STDLIB | {"torch", "torchvision", "numpy"} | extra or name.startswith(
                "zsm.ops"
            ), f"{path} imports {name}"


def test_the_video_pipeline_sees_models_only_through_the_descriptor() -> None:
    for path in sorted((SRC / "video").glob("*.py")):
        for name in _imports(path):
            if name.startswith("zsm.models") or name.startswith("zsm.engine"):
                assert name == "zsm.models.descriptor", f"{path.name} imports {name}"


def test_no_module_over_500_lines() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 500
    }
    assert long == {}
