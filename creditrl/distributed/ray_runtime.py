"""Connecting to Ray: a cluster when there is one, a local instance otherwise (install.md §3).

- `resources.ray_address` set: connect there ("auto" = the cluster this node belongs to). Unset:
  `address="auto"` when `RAY_ADDRESS` is set (as inside `ray job submit`), else a fresh local instance
  (`address="local"`, which ignores a stale `ray_current_cluster` file).
- Ray's token auth is on by default in 2.60 and breaks `ray job submit` against a local head; creditrl sets
  `RAY_AUTH_MODE=disabled` unless the user chose a mode.
- Only an allow-list of environment variables is forwarded to the workers, merged into (never replacing) the
  job's runtime_env (verl PR #3673; NeMo-RL#309: forwarding all of os.environ broke the agent).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

FORWARDED_ENV = (
    "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "DS_ACCELERATOR",
    "DS_BUILD_OPS", "TORCH_EXTENSIONS_DIR", "OMP_NUM_THREADS", "NCCL_DEBUG", "NCCL_SOCKET_IFNAME",
    "GLOO_SOCKET_IFNAME", "TORCH_NCCL_AVOID_RECORD_STREAMS", "CREDITRL_LOG_LEVEL", "PYTHONPATH",
)


def worker_env() -> dict[str, str]:
    """The allow-listed variables that are set here, plus creditrl's defaults for CPU DeepSpeed."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("DS_BUILD_OPS", "0")
    env.setdefault("OMP_NUM_THREADS", "1")  # several actors share the cores; torch's default oversubscribes
    return env


def resolve_address(configured: str | None) -> str:
    """`resources.ray_address` if set; "auto" when `RAY_ADDRESS` is set (`ray job submit` sets it for the
    driver); else "local".

    Deviation from architecture.md §2.13 ("auto when a cluster exists"): a running cluster is *not* detected
    by looking for a GCS process, because on a shared machine that also finds other users' local instances
    and would attach to them. Set `resources.ray_address: auto` (or RAY_ADDRESS) to use a running cluster.
    """
    if configured:
        return configured
    if os.environ.get("RAY_ADDRESS"):
        return "auto"
    return "local"


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Start or attach to Ray (idempotent); returns the address mode used."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return "existing"
    mode = resolve_address(address)
    kwargs: dict = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": True}
    if mode == "local":
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(address=mode, **kwargs)
    log.info("ray: %s (%s)", mode, ray.cluster_resources())
    return mode


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
