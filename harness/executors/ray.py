"""Ray executor (the `ray` extra): each cell is a Ray task with declared resources, for clusters.

Ray starts a local instance unless RAY_ADDRESS names a cluster. The results directory must be on a
file system every node sees (the cells write their rows and checkpoints there themselves).
"""

from __future__ import annotations

from harness import hookimpl


def _execute(cell, runtime):
    from harness.cells import execute, worker_init

    worker_init(runtime.threads or 1)
    return execute(cell, runtime)


class RayExecutor:
    def __init__(self, *, workers: int, runtime):
        try:
            import ray
        except ImportError:
            from harness.registry import ConfigError
            raise ConfigError("Ray is not installed: pip install 'untunable[ray]'", where="--executor ray") from None
        self.started_here = not ray.is_initialized()
        if self.started_here:
            ray.init(num_cpus=workers or None, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        gpus = 1 if runtime.device.startswith("cuda") else 0
        self.task = ray.remote(num_cpus=runtime.threads or 1, num_gpus=gpus, max_retries=0)(_execute)
        self.runtime = runtime
        self.capacity = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, cell):
        return self.task.remote(cell, self.runtime).future()

    def recover(self) -> None:
        """Ray replaces dead workers by itself."""

    def shutdown(self) -> None:
        if self.started_here:
            import ray
            ray.shutdown()


@hookimpl
def register_executors(register):
    register("ray", description="Ray tasks with declared CPU/GPU resources (needs the ray extra; RAY_ADDRESS for a cluster).",
             factory="harness.executors.ray:RayExecutor", version="1")
