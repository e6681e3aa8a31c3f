"""``zsm info``: versions, devices, deformable-conv backends and bundled weights."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show versions, devices, backends and bundled weights")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    import zsm
    from zsm.ops.dcn import available_backends, select_backend

    print(f"zsm {zsm.__version__}, torch {torch.__version__}")
    cuda = torch.cuda.is_available()
    print(f"cuda: {torch.cuda.get_device_name(0) if cuda else 'not available'}")
    print(
        f"deformable-conv backends: {', '.join(available_backends())} "
        f"(cpu uses {select_backend(torch.device('cpu')).name})"
    )
    for name, entry in sorted(zsm.registered_weights().items()):
        state = "installed" if entry.path.is_file() else "missing"
        print(f"weights {name}: preset {entry.preset}, {state} - {entry.description}")
    return 0
