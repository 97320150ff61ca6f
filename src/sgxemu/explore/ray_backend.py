"""Ray backend for `parallel_bfs` (optional: `pip install 'sgxemu[explore]'`).

Each worker is a Ray actor holding one `Expander` (one world, built once); frontier chunks are
submitted to the actors round robin and collected in submission order. `ray_address=None`
starts (or joins) a local cluster on this machine; on a real cluster pass the head's address
("ray://host:10001" or "auto").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .parallel import Child, Node, WorldSpec


def available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayPool:
    """Ray actors, one world each; the same interface as the process pool."""

    def __init__(self, spec: WorldSpec, por: bool, workers: int, address: str | None) -> None:
        import ray

        self.ray = ray
        self.started_here = False
        if not ray.is_initialized():
            # String hashes must agree between workers (state keys are hashes).
            env = {"env_vars": {"PYTHONHASHSEED": "0"}}
            if address is None:
                ray.init(num_cpus=workers, include_dashboard=False, runtime_env=env, log_to_driver=False)
            else:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            self.started_here = True
        from .parallel import Expander

        actor_cls: Any = ray.remote(Expander)
        self.actors = [actor_cls.remote(spec, por) for _ in range(workers)]

    def root_info(self) -> tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]]:
        info: tuple[tuple[int, int], tuple[str, ...], tuple[str, ...]] = self.ray.get(self.actors[0].root_info.remote())
        return info

    def run(self, jobs: list[tuple[int, int, list[Node]]], level: int) -> Iterator[tuple[int, list[Child]]]:
        """Submit a level's chunks; yield (ticket, successors) as actors finish them."""
        ray = self.ray
        pending = {self.actors[w % len(self.actors)].expand.remote(nodes, level): ticket for ticket, w, nodes in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                yield pending.pop(ref), ray.get(ref)[0]

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self.started_here:
            self.ray.shutdown()
