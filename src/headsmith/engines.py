"""Ray, for the work that outgrows one machine (batch scoring, filling the embedding cache). An optional extra:
`pip install 'headsmith[ray]'`; nothing else imports Ray."""

from __future__ import annotations

from dataclasses import dataclass

from headsmith.errors import HeadsmithError

RAY_TASK_ROWS = 2048  # rows an actor takes per call: small enough that a chunk is shared among the actors


@dataclass(frozen=True)
class RayOptions:
    """`address`: a running cluster ("auto", or ray://HOST:10001); None starts a local Ray sized to the pool.
    `workers` actors of `threads` CPU threads each."""

    address: str | None = None
    workers: int = 2
    threads: int = 1

    @classmethod
    def from_config(cls, ray) -> "RayOptions | None":
        """The training config's `ray` block (null: no Ray)."""
        return None if ray is None else cls(ray.get("address"), int(ray.get("workers", 2)),
                                            int(ray.get("threads_per_worker", 1)))

    def start(self):
        """Ray, joined or started, with Ray Data keeping the input order; returns the `ray` module."""
        try:
            import ray
        except ImportError:
            raise HeadsmithError("Ray is not installed: pip install 'headsmith[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=self.address, num_cpus=None if self.address else self.workers * self.threads,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        return ray

    def pool(self, ray) -> dict:
        """The map_batches arguments of an actor pool of these sizes."""
        return {"num_cpus": self.threads, "compute": ray.data.ActorPoolStrategy(size=self.workers)}


def stop_ray() -> None:
    import ray

    ray.shutdown()
