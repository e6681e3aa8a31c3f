"""The summary of a run on a Ray cluster: segments, nodes used, frames/s per node."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from zsm.distributed.tasks import SegmentResult


@dataclass(frozen=True)
class NodeReport:
    """What one node made: ``frames`` output frames in ``segments`` tasks, busy ``seconds``
    (from its first task's start to its last one's end)."""

    node: str
    segments: int
    frames: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ClusterReport:
    """One run on a cluster: segments run here, taken over from an interrupted run, and
    retried (their worker died), per-node speed, and the cluster's task slots."""

    segments: int
    resumed_segments: int
    retried_segments: int
    slots: int
    nodes: tuple[NodeReport, ...]
    seconds: float  # wall time of the run

    @classmethod
    def of(
        cls,
        results: Iterable[SegmentResult],
        *,
        resumed: int,
        retried: int,
        slots: int,
        seconds: float,
        names: dict[str, str] | None = None,
    ) -> ClusterReport:
        """From the results of the run's tasks; ``names``: node id -> address to show."""
        by_node: dict[str, list[SegmentResult]] = {}
        for r in results:
            by_node.setdefault((names or {}).get(r.node, r.node), []).append(r)
        nodes = tuple(
            NodeReport(
                node,
                len(rs),
                sum(r.frames for r in rs),
                max(r.finished for r in rs) - min(r.started for r in rs),
            )
            for node, rs in sorted(by_node.items())
        )
        return cls(sum(n.segments for n in nodes), resumed, retried, slots, nodes, seconds)

    @property
    def frames(self) -> int:
        return sum(n.frames for n in self.nodes)

    def lines(self) -> list[str]:
        """The summary as the CLI prints it."""
        extra = f", {self.resumed_segments} resumed" if self.resumed_segments else ""
        extra += f", {self.retried_segments} retried" if self.retried_segments else ""
        rate = self.frames / self.seconds if self.seconds > 0 else 0.0
        out = [
            f"ray: {self.segments} segments{extra} on {len(self.nodes)} node(s), "
            f"{self.slots} task slot(s): {self.frames} frames in {self.seconds:.1f} s "
            f"({rate:.2f} frames/s)"
        ]
        out += [
            f"  node {n.node}: {n.segments} segments, {n.frames} frames, "
            f"{n.frames_per_second:.2f} frames/s"
            for n in self.nodes
        ]
        return out
