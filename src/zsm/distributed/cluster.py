"""The Ray cluster: connecting, what each task asks for, and the shared-storage check.

``auto`` connects to the cluster ``RAY_ADDRESS`` names, else to one already
running on this machine (``ray start --head``), else starts a local one for
the run. Segment files are written by the workers into the work folder and
read by the driver, so that folder, like the inputs, must be on storage
every node sees (NFS, a cluster file system): :func:`check_shared_storage`
has a task on every node that would run segments read a marker the driver
wrote, and stops the run with one line naming the node if one cannot.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from zsm.atomic import describe_os_error
from zsm.errors import InputError, OutputError, ZSMError

log = logging.getLogger("zsm")

CHECK_TIMEOUT_S = 120.0  # nodes answering the storage check
MARKER_PREFIX = ".zsm-shared-"


def require_ray() -> ModuleType:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ZSMError("--ray needs Ray, which is not installed: pip install 'zsm[ray]'") from None


@contextlib.contextmanager
def connect(address: str) -> Iterator[ModuleType]:
    """Ray, connected to ``address`` (or ``auto``) for the block; see the module docstring.

    A Ray already initialised in this process (by the caller) is used as it is
    and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = dict(
        include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True
    )
    _check_reachable(address if address != "auto" else os.environ.get("RAY_ADDRESS", ""))
    try:
        if address == "auto":
            try:
                ray.init(address="auto", **kwargs)  # RAY_ADDRESS, else a running cluster
            except ConnectionError:
                if os.environ.get("RAY_ADDRESS"):
                    raise
                ray.init(**kwargs)  # none: a local cluster for this run
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        named = address if address != "auto" else os.environ.get("RAY_ADDRESS", "auto")
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ZSMError(f"cannot connect to the Ray cluster at {named}: {why}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A one-line error now for a ``host:port`` nobody listens on (Ray would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return  # "auto", a name Ray resolves itself, ...
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ZSMError(f"cannot connect to the Ray cluster at {address}: {why}") from None


@dataclass(frozen=True)
class TaskShape:
    """What one segment task asks the cluster for, and how many run at once."""

    resources: dict[str, float]  # num_cpus / num_gpus for ``.options``
    per_node: dict[str, int]  # node id -> tasks it can run at once
    device: str  # the device a task uses ("auto" resolves on the worker)
    threads: int | None  # torch threads in a CPU task

    @property
    def slots(self) -> int:
        """Tasks the cluster can run at once."""
        return sum(self.per_node.values())

    def fits(self, node_resources: dict[str, float]) -> bool:
        """Whether a node with ``node_resources`` can run a task of this shape."""
        need = {"CPU": self.resources.get("num_cpus", 0), "GPU": self.resources.get("num_gpus", 0)}
        return all(node_resources.get(k, 0) >= v for k, v in need.items() if v)


def alive_nodes(ray: ModuleType) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def task_shape(ray: ModuleType, device: str, cpus_per_task: float | None) -> TaskShape:
    """One GPU per task where the cluster has GPUs (and ``device`` allows), else CPUs."""
    nodes = alive_nodes(ray)
    kind = device.split(":")[0]
    gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
    if kind == "cuda" and not gpus:
        raise ZSMError(f"--device {device}: the Ray cluster has no GPUs; use --device cpu")
    if kind in ("auto", "cuda") and gpus >= 1:
        per_node = {n["NodeID"]: int(n["Resources"].get("GPU", 0)) for n in nodes}
        return TaskShape({"num_gpus": 1, "num_cpus": 1}, per_node, "cuda", None)
    cpus = cpus_per_task or 1.0
    largest = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    if cpus > largest:
        raise ZSMError(
            f"--ray-cpus-per-task {cpus:g}: no node of the Ray cluster has that many CPUs "
            f"(the largest has {largest:g})"
        )
    per_node = {n["NodeID"]: int(n["Resources"].get("CPU", 0) // cpus) for n in nodes}
    device = "cpu" if kind == "auto" else device
    return TaskShape({"num_cpus": cpus}, per_node, device, max(1, int(cpus)))


def node_names(ray: ModuleType) -> dict[str, str]:
    """Node id -> the address the node registered with (its IP)."""
    return {n["NodeID"]: n.get("NodeManagerAddress") or n["NodeID"][:8] for n in ray.nodes()}


def _sees(marker: str, inputs: list[str]) -> tuple[str | None, list[str]]:
    """On a node: the marker's text (None: cannot read it), and the inputs it cannot see."""
    try:
        text: str | None = Path(marker).read_text()
    except OSError:
        text = None
    return text, [p for p in inputs if not os.path.exists(p)]


def marker_text(token: str) -> str:
    """What the driver writes into the marker (a test replaces it to fake a private disk)."""
    return token


def check_shared_storage(
    ray: ModuleType, folder: Path, inputs: Sequence[Path], shape: TaskShape
) -> int:
    """Raise unless every node that can run a segment sees ``folder`` and ``inputs``.

    Returns the number of such nodes.
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in alive_nodes(ray) if shape.fits(n["Resources"])]
    token = uuid.uuid4().hex
    marker = folder / f"{MARKER_PREFIX}{token}"
    try:
        marker.write_text(marker_text(token))
    except OSError as exc:
        raise OutputError(describe_os_error(exc, marker)) from exc
    probe = ray.remote(num_cpus=0, max_retries=1)(_sees)
    try:
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker), [str(p.absolute()) for p in inputs])
            for n in nodes
        ]
        try:
            answers = ray.get(refs, timeout=CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            raise ZSMError(
                f"the Ray cluster's nodes did not answer the storage check in {CHECK_TIMEOUT_S:g} s"
            ) from None
    finally:
        marker.unlink(missing_ok=True)
    for node, (text, missing) in zip(nodes, answers, strict=True):
        ip = node.get("NodeManagerAddress", node["NodeID"])
        if text != token:
            raise OutputError(
                f"node {ip} of the Ray cluster cannot see the work folder {folder}: "
                "put OUTPUT on storage every node shares (NFS or a cluster file system)"
            )
        if missing:
            raise InputError(
                f"node {ip} of the Ray cluster cannot see the input {missing[0]}: "
                "put the inputs on storage every node shares"
            )
    return len(nodes)
