"""The `resources` section and the failure messages (no Ray)."""

import pytest

from creditrl.config import load_config
from creditrl.learner.ds_config import deepspeed_config
from creditrl.distributed.errors import describe_failure
from creditrl.distributed.ray_runtime import resolve_address, worker_env


def test_default_is_single_process_and_ray_recipes_differ_only_in_resources():
    base = load_config("tiny_grpo", [])
    ray = load_config("tiny_grpo_ray", [])
    assert base.resources.backend == "local" and ray.resources.backend == "ray"
    for section in ("model", "data", "rollout", "reward", "algorithm", "train", "eval", "checkpoint"):
        if section != "sft":
            assert getattr(base, section) == getattr(ray, section), section
    z3 = load_config("tiny_grpo_ray_zero3", [])
    assert z3.resources.zero_stage == 3


@pytest.mark.parametrize("override, match", [
    ("resources.zero_stage=4", "zero_stage"),
    ("resources.rollout_actors=0", "rollout_actors"),
    ("resources.offload_params=true", "offload_params"),
    ("resources.call_timeout_s=0", "timeout"),
    ("resources.weight_sync=cuda_ipc", "cuda_ipc needs resources.use_gpu=true and resources.placement=colocated"),
    ("resources.weight_sync=nccl", "weight_sync"),
    ("resources.weight_sync=broadcast resources.use_gpu=true", "two NCCL ranks on one GPU"),
    ("resources.weight_sync_bucket_mb=0", "weight_sync_bucket_mb"),
])
def test_bad_resources_raise(override, match):
    with pytest.raises(Exception, match=match):
        load_config("tiny_grpo_ray", override.split())


def test_deepspeed_config_from_recipe():
    cfg = load_config("tiny_grpo_ray", ["resources.zero_stage=3", "resources.offload_optimizer=true",
                                        "resources.offload_params=true", "train.max_grad_norm=0.5"])
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["gradient_clipping"] == 0.5
    assert ds["managed_gradient_accumulation"] is False and ds["gradient_accumulation_steps"] == 1
    assert "optimizer" not in ds  # client AdamW: no fused_adam JIT build


def test_failure_message_names_actor_node_and_resume():
    msg = describe_failure("learner", {"rank": 1, "node_ip": "10.0.0.7", "host": "gpu-7", "pid": 4242}, "update",
                           RuntimeError("boom"), "resume with --resume")
    assert "learner rank 1 on node 10.0.0.7" in msg and "gpu-7" in msg and "4242" in msg
    assert "update" in msg and "boom" in msg and "--resume" in msg


def test_address_resolution_and_env_allow_list(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "local"
    assert resolve_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert resolve_address(None) == "auto"
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = worker_env()
    assert "SECRET_TOKEN" not in env and env["DS_BUILD_OPS"] == "0"


def test_lora_with_cuda_ipc_is_rejected():
    with pytest.raises(Exception, match="adapters are synced alone"):
        load_config("tiny_grpo_ray", ["model.lora.enabled=true", "resources.use_gpu=true",
                                      "resources.weight_sync=cuda_ipc"])


@pytest.mark.parametrize("use_gpu, placement, lora, expected", [
    (False, "colocated", False, "broadcast"),  # CPU: gloo broadcast
    (False, "disaggregated", False, "broadcast"),
    (True, "colocated", False, "cuda_ipc"),
    (True, "disaggregated", False, "broadcast"),  # NCCL
    (True, "colocated", True, "object_store"),  # LoRA: adapters only
    (False, "colocated", True, "object_store"),
])
def test_auto_weight_sync_transport(use_gpu, placement, lora, expected):
    from creditrl.distributed.weight_sync import resolve_transport

    assert resolve_transport("auto", use_gpu, placement, lora) == expected
    assert resolve_transport("object_store", use_gpu, placement, lora) == "object_store"
