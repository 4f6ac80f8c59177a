"""One learner rank: a DeepSpeed engine (ZeRO 0-3, optional CPU offload, bf16) in a Ray actor.

The ranks form one torch.distributed group (gloo on CPU, NCCL on GPU). Each rank gets the whole
`RolloutBatch` and the step's `MiniPlan`s (creditrl/learner/dp_split.py) and processes its own rows with the
single-process math: `micro_batch_token_stats` for per-token stats and `Algorithm.loss` with an
`AggregationNorm` holding the GLOBAL mini-batch totals (tokens and sequences over all ranks).

Why the gradient equals the single-process one: the mini-batch loss is L = sum_r L_r, where L_r sums the
micro-batch losses of rank r, each normalised by the global totals. DeepSpeed averages gradients over the
world (divides the sum by W), so each rank back-propagates W * L_r and the reduced gradient is
(1/W) * sum_r W * grad L_r = grad L.

Preference runs (a recipe with `preference:`) use the same rank: `preference_update` / `evaluate_pairs` run
`creditrl/learner/preference.py` on this rank's share of the pairs; the pair forward goes through the
DeepSpeed engine (`TokenStatsModule` with a `PairRequest`), and the reference / cDPO models are frozen copies
on every rank (with LoRA: the policy with its adapter disabled).

ZeRO-3 notes (architecture.md §2.4): the lm_head weight is used outside its module's forward (the fused
log-prob op takes `head.weight`), so it is registered as an external parameter of the wrapper module and is
gathered for the wrapper's forward; weight buckets are gathered with `GatheredParameters` on every rank in the
same order, sized by `ds_numel`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.config.schema import RecipeConfig
from creditrl.learner.dp_split import MiniPlan
from creditrl.learner.ds_config import deepspeed_config
from creditrl.weights.broadcast import TensorMeta, make_group, make_store, send_buckets
from creditrl.weights.buckets import ObjectStoreTransport, is_adapter_tensor, plan_buckets_by_numel
from creditrl.learner import core, health
from creditrl.learner import critic as critic_core
from creditrl.learner import preference as pref
from creditrl.learner.batch import MicroBatch, RolloutBatch, packing_width
from creditrl.learner.pair_stats import ReferenceStats, pair_token_stats
from creditrl.learner.pairs import Pair
from creditrl.models.build import build_optimizer, build_policy, build_reference
from creditrl.learner.token_stats import compiled_decoder, decoder_and_head, micro_batch_token_stats
from creditrl.models.precision import use_bf16_autocast

log = logging.getLogger(__name__)

DS_CHECKPOINT_DIR = "deepspeed"  # ZeRO shards (model, optimizer, scheduler) inside a creditrl checkpoint
DS_TAG = "state"


@dataclass(frozen=True)
class PairRequest:
    """A preference pair forward through the engine: `pair_token_stats` with these reference statistics."""

    keys: list[str]
    refs: ReferenceStats
    want_kl: bool


class TokenStatsModule(torch.nn.Module):
    """The DeepSpeed-wrapped module: forward = per-token stats of a micro-batch (so ZeRO hooks see it); with a
    `PairRequest`, the pair statistics of a preference micro-batch (reference lookup included: with LoRA the
    reference is this policy with its adapter disabled, whose lm_head ZeRO-3 gathers only inside this forward)."""

    def __init__(self, policy, temperature: float, autocast_bf16: bool, compile_decoder: bool = False):
        super().__init__()
        self.policy = policy
        self.temperature, self.autocast_bf16 = temperature, autocast_bf16
        # outside the module tree (a plain attribute): DeepSpeed sees each parameter once, under its own name
        object.__setattr__(self, "decoder", compiled_decoder(policy) if compile_decoder else None)

    def forward(self, mb, want: tuple[str, ...] = (), keep_hidden: bool = False,
                kernel_options: dict | None = None, pair: PairRequest | None = None) -> dict[str, Tensor]:
        if pair is not None:
            return pair_token_stats(self.policy, mb, pair.keys, pair.refs, pair.want_kl, self.autocast_bf16)
        return micro_batch_token_stats(self.policy, mb, self.temperature, want, self.autocast_bf16, kernel_options,
                                       keep_hidden=keep_hidden, decoder=self.decoder)


def _param_full_numel(p) -> int:
    return int(getattr(p, "ds_numel", p.numel()))


class DeepSpeedLearnerWorker:
    """Ray actor body of one learner rank (made remote by `LearnerGroup`)."""

    def __init__(self, cfg: RecipeConfig, rank: int, world_size: int, master_addr: str, master_port: int,
                 total_optimizer_steps: int, pad_id: int):
        import deepspeed

        self.cfg, self.rank, self.world, self.pad_id = cfg, rank, world_size, pad_id
        rc = cfg.resources
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK="0",  # Ray narrows devices
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        if not rc.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.manual_seed(cfg.seed)  # identical LoRA init on every rank (DeepSpeed also broadcasts rank 0's)
        deepspeed.init_distributed(dist_backend="nccl" if rc.use_gpu else "gloo", rank=rank,
                                   world_size=world_size, timeout=timedelta(seconds=rc.comm_timeout_s),
                                   verbose=False)
        self.device = torch.device("cuda", torch.cuda.current_device()) if rc.use_gpu else torch.device("cpu")
        self.policy = build_policy(cfg.model).to(self.device)
        self.ref = None  # with LoRA the reference is the base model with the adapter disabled
        if cfg.preference is None and Algorithm(cfg.algorithm).stats.ref_logprobs and not cfg.model.lora.enabled:
            self.ref = build_reference(cfg.model).to(self.device)  # a full copy per rank (tiny models)
        self.pref = None  # preference runs: reference / cDPO models and their statistics caches, on this rank
        if cfg.preference is not None:
            self.pref = pref.build_preference_models(cfg, self.policy, self.device, partitioned=rc.zero_stage == 3)
        self.pack_width = packing_width(cfg.train.pack_groups, self.policy, self.ref)
        self.module = TokenStatsModule(self.policy, cfg.rollout.temperature, use_bf16_autocast(cfg.model),
                                       cfg.model.compile)
        if rc.zero_stage == 3:
            deepspeed.zero.register_external_parameter(self.module, decoder_and_head(self.policy)[1].weight)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer, scheduler = build_optimizer(params, cfg.train, total_optimizer_steps,
                                               cpu_offload=rc.offload_optimizer)
        initial_max_abs = health.max_abs(params)  # before ZeRO-3 partitions them: the same on every rank
        self.engine, _, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, lr_scheduler=scheduler,
                                                    model_parameters=params, config=deepspeed_config(cfg))
        self.params = params
        self.critic = None  # PPO with GAE: the value model's own engine on this rank (critic_deepspeed.py)
        if cfg.critic is not None:  # never with preference: (config check_critic)
            from creditrl.learner.critic_deepspeed import DeepSpeedCritic

            self.critic = DeepSpeedCritic(cfg, world_size, self.device, pad_id)
        self.param_limit = health.param_limit(initial_max_abs, cfg.train.max_param_abs)
        self.skipped_steps = 0
        self.consecutive_skipped = 0  # the skip budget's counter (creditrl/learner/health.py)
        self._sync_store = self._sync_group = self._ipc = None  # weight-sync state (rank 0 / colocated GPU)
        self._sync_host, self._sync_groups_built = "", 0
        log.info("learner rank %d/%d up on %s (ZeRO-%d)", rank, world_size, socket.gethostname(), rc.zero_stage)

    def info(self) -> dict:
        """Where this rank runs (for error messages): rank, host, node IP, pid."""
        import ray

        return {"rank": self.rank, "host": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
                "pid": os.getpid()}

    def _gather(self, params):
        """Full parameters for reading (ZeRO-3: a collective; every rank must call with the same list)."""
        if self.cfg.resources.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    # ---- the Shell of creditrl/learner/core.py -----------------------------------------------------------
    def forward(self, mb: MicroBatch, want: tuple[str, ...], keep_hidden: bool = False,
                kernel_options: dict | None = None) -> dict[str, Tensor]:
        return self.engine(_to_device(mb, self.device), want, keep_hidden, kernel_options)

    def ref_logprobs(self, mb: MicroBatch) -> Tensor:
        if self.ref is not None:
            return micro_batch_token_stats(self.ref, _to_device(mb, self.device), self.cfg.rollout.temperature,
                                           ("logp",), use_bf16_autocast(self.cfg.model))["logp"]
        with self._ref_context():
            return self.forward(mb, ("logp",))["logp"]

    def _ref_context(self):
        if self.cfg.model.lora.enabled:
            return self.policy.disable_adapter()
        raise RuntimeError("reference log-probs were requested but this learner built no reference model: it "
                           "builds one only when its recipe's algorithm needs one (KL to the reference) or with LoRA")

    def head_weight(self) -> Tensor:
        w = decoder_and_head(self.policy)[1].weight
        with self._gather([w]):
            return w.detach().clone()

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss * self.world)  # DeepSpeed averages over the ranks; the loss is a global share

    def step(self, finite: bool) -> float | None:
        return deepspeed_step(self.engine, self.policy, finite, self.cfg.resources.zero_stage, self.device)

    def set_train(self, mode: bool) -> None:
        self.engine.train(mode)

    def param_max_abs(self) -> float:
        """max |theta| over every rank's trainable parameters (inf if any is non-finite): each rank measures what
        it holds (its partition `ds_tensor` under ZeRO-3, the full replica otherwise) and the ranks all-reduce the
        maximum, so every rank gets the same value. A collective: every rank calls it."""
        import torch.distributed as dist

        local = health.max_abs(getattr(p, "ds_tensor", p) for p in self.params)
        value = torch.tensor([local], dtype=torch.float32, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return float(value.item())

    def pair_stats(self, mb: MicroBatch, keys: list[str], refs: ReferenceStats, want_kl: bool) -> dict[str, Tensor]:
        """The `PairShell` forward of creditrl/learner/preference.py, through the DeepSpeed engine."""
        return self.engine(_to_device(mb, self.device), pair=PairRequest(keys, refs, want_kl))

    # ---- the learner step (creditrl/learner/core.py), on this rank's rows --------------------------------
    def compute_old_stats(self, batch: RolloutBatch, algorithm: Algorithm, plans: list[MiniPlan]) -> dict:
        """pi_old / pi_ref statistics of this rank's real rows (`core.old_pass`)."""
        return core.old_pass(self, _batch_to(batch, self.device), algorithm.stats, plans, self.rank,
                             policy=not core.skips_old_pass(self.cfg, algorithm, plans))

    def update(self, batch: RolloutBatch, algorithm: Algorithm, plans: list[MiniPlan]) -> core.UpdatePart:
        """This rank's share of the step's update (`core.update`); the group reduces the shares."""
        part = core.update(self, _batch_to(batch, self.device), algorithm, plans, self.cfg, self.rank,
                           skipped_before=self.skipped_steps, consecutive_before=self.consecutive_skipped)
        self.skipped_steps, self.consecutive_skipped = part.skipped_steps, part.consecutive_skipped
        part.lr = self.engine.get_lr()[0]
        return part

    # ---- the critic step (creditrl/learner/critic.py), on this rank's rows --------------------------------
    def critic_values(self, batch: RolloutBatch, plans: list[MiniPlan]) -> dict:
        """V_old of this rank's real rows (`critic.old_values`)."""
        return critic_core.old_values(self.critic, _batch_to(batch, self.device), plans, self.rank)

    def critic_update(self, batch: RolloutBatch, plans: list[MiniPlan]) -> tuple[critic_core.CriticPart, float]:
        """This rank's share of the critic update (`critic.update`) and the critic's learning rate."""
        part = critic_core.update(self.critic, _batch_to(batch, self.device), plans, self.cfg.train.ppo_epochs,
                                  self.cfg.critic.cliprange_value, self.rank)
        return part, self.critic.engine.get_lr()[0]

    def preference_update(self, pairs: Sequence[Pair], plan: pref.Plan) -> pref.PairUpdatePart:
        """This rank's share of a preference step (`preference.update`); the group reduces the shares."""
        part = pref.update(self, pairs, plan, self.cfg, self._preference_models(), self.rank,
                           skipped_before=self.skipped_steps, consecutive_before=self.consecutive_skipped)
        self.skipped_steps, self.consecutive_skipped = part.skipped_steps, part.consecutive_skipped
        part.lr = self.engine.get_lr()[0]
        return part

    def evaluate_pairs(self, pairs: Sequence[Pair], plan: pref.Plan) -> dict[str, float]:
        """This rank's sums of the held-out pair metrics (`preference.evaluate_share`)."""
        return pref.evaluate_share(self, pairs, plan, self._preference_models(), self.rank)

    def _preference_models(self) -> pref.PreferenceModels:
        if self.pref is None:
            raise ValueError("preference_update / evaluate_pairs need a recipe with a `preference:` section")
        return self.pref

    # ---- weights -----------------------------------------------------------------------------------------
    def _sync_params(self, adapter_only: bool) -> list[tuple[str, torch.nn.Parameter]]:
        named = list(self.policy.named_parameters())
        if adapter_only:
            named = [(n, p) for n, p in named if is_adapter_tensor(n)]
        return named

    def _bucket_plan(self, bucket_bytes: int, adapter_only: bool) -> list[list[tuple[str, torch.nn.Parameter]]]:
        """The sync's buckets of (name, parameter), sized by the FULL parameter sizes (the same on every rank,
        so the ZeRO-3 gathers line up)."""
        named = self._sync_params(adapter_only)
        elem = max((p.element_size() for _, p in named), default=4)
        return [[named[i] for i in idx]
                for idx in plan_buckets_by_numel([_param_full_numel(p) for _, p in named], elem, bucket_bytes)]

    def _gathered(self, chunk: list[tuple[str, torch.nn.Parameter]]):
        """Yield the chunk's full tensors on rank 0 (None elsewhere) inside one ZeRO-3 gather (all ranks)."""
        with self._gather([p for _, p in chunk]):
            yield {n: p.detach() for n, p in chunk} if self.rank == 0 else None

    def _iter_gathered(self, bucket_bytes: int, adapter_only: bool):
        for chunk in self._bucket_plan(bucket_bytes, adapter_only):
            yield from self._gathered(chunk)

    def weight_manifest(self, bucket_bytes: int, adapter_only: bool) -> list:
        """Names, full shapes and dtypes of every bucket (`broadcast.Manifest`); no communication."""
        return [tuple(TensorMeta(n, tuple(getattr(p, "ds_shape", p.shape)), p.dtype) for n, p in chunk)
                for chunk in self._bucket_plan(bucket_bytes, adapter_only)]

    def weight_buckets(self, bucket_bytes: int, adapter_only: bool) -> list:
        """Object-store buckets of the current weights (rank 0 returns the refs; every rank must call)."""
        transport = ObjectStoreTransport()
        refs = [transport.pack(b) for b in self._iter_gathered(bucket_bytes, adapter_only) if b is not None]
        return [refs] if self.rank == 0 else []  # wrapped: a bare list of refs would be resolved by ray.get

    # ---- broadcast weight sync (rank 0 is rank 0 of the sync group; creditrl/weights/broadcast.py) -----
    def open_sync_store(self, timeout_s: float) -> tuple[str, int, str]:
        """Rank 0: host the sync groups' TCPStore on a free port (one store for every group this rank builds)
        and name the next group: (host, port, key prefix). Prefixes never repeat, so a rebuilt group cannot
        read an earlier group's rendezvous keys."""
        import ray

        if self._sync_store is None:
            self._sync_host = ray.util.get_node_ip_address()
            self._sync_store = make_store(self._sync_host, timeout_s)
        self._sync_groups_built += 1
        return self._sync_host, self._sync_store.port, f"creditrl-sync-{self._sync_groups_built}"

    def init_sync_group(self, backend: str, prefix: str, world_size: int, timeout_s: float) -> None:
        """Rank 0: join the sync group as its sender (blocks until every rollout engine has joined)."""
        self._sync_group = make_group(backend, self._sync_store, prefix, 0, world_size, timeout_s)

    def broadcast_weights(self, bucket_bytes: int, adapter_only: bool, manifest: list) -> dict:
        """All ranks (ZeRO-3 gathers); rank 0 broadcasts each bucket while the next one is gathered.

        A failed broadcast (a receiver died) is reported, not raised: rank 0 still walks through the remaining
        gathers so the other ranks are not left waiting in a collective.
        """
        buckets = self._iter_gathered(bucket_bytes, adapter_only)
        result = {"ok": True, "bytes": 0}
        if self.rank == 0:
            try:
                result["bytes"] = send_buckets(self._sync_group, buckets, manifest, self.device)
            except Exception as exc:  # gloo/NCCL error or timeout: the group is broken, the controller rebuilds it
                self._sync_group = None
                log.warning("weight-sync broadcast failed: %s", exc)
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        for _ in buckets:  # the other ranks, or rank 0 after a failure: the remaining gathers, in lockstep
            pass
        return result

    # ---- CUDA IPC weight sync (colocated GPU; creditrl/weights/cuda_ipc.py) ----------------------
    def ipc_bucket(self, k: int, bucket_bytes: int, adapter_only: bool):
        """Bucket k gathered on every rank and shared by a CUDA IPC handle (each rank for its own GPU)."""
        from creditrl.weights.cuda_ipc import CudaIpcTransport

        if self._ipc is None:
            self._ipc = CudaIpcTransport()
        chunk = self._bucket_plan(bucket_bytes, adapter_only)[k]
        with self._gather([p for _, p in chunk]):
            return self._ipc.pack({n: p.detach() for n, p in chunk})

    def release_ipc(self) -> None:
        """Free the shared buffers once every engine has loaded them."""
        if self._ipc is not None:
            self._ipc.release()

    def full_state(self, adapter_only: bool) -> dict[str, Tensor] | None:
        """All (or adapter) weights, gathered; rank 0 returns them, others None (every rank must call)."""
        named = self._sync_params(adapter_only)
        with self._gather([p for _, p in named]):
            state = {n: p.detach().cpu().clone() for n, p in named} if self.rank == 0 else None
        return state

    # ---- checkpoints -------------------------------------------------------------------------------------
    def save(self, directory: str) -> None:
        """ZeRO shards of every rank under `directory/deepspeed`, plus the HF model (rank 0) in `directory/model`."""
        d = Path(directory)
        self.engine.save_checkpoint(str(d / DS_CHECKPOINT_DIR), tag=DS_TAG,
                                    client_state={"skipped_steps": self.skipped_steps,
                                                  "consecutive_skipped": self.consecutive_skipped})
        with self._gather(list(self.policy.parameters())):
            if self.rank == 0:
                self.policy.save_pretrained(d / "model")
        if self.critic is not None:
            self.critic.save(d / "critic", self.rank)

    def load(self, directory: str) -> None:
        path = Path(directory) / DS_CHECKPOINT_DIR
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {directory} has no DeepSpeed state in {path} (was it written by "
                                    f"the single-process trainer? resume it with resources.backend=local)")
        _, client = self.engine.load_checkpoint(str(path), tag=DS_TAG)
        self.skipped_steps = (client or {}).get("skipped_steps", 0)
        self.consecutive_skipped = (client or {}).get("consecutive_skipped", 0)
        if self.critic is not None:
            self.critic.load(Path(directory) / "critic")

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def deepspeed_step(engine, module: torch.nn.Module, finite: bool, zero_stage: int, device: torch.device) -> float | None:
    """One optimizer step of a DeepSpeed engine over `module`; the pre-clip global gradient norm, or None if the
    step was skipped. ZeRO 1-3 skip a step whose reduced gradients are non-finite by themselves (a rank that saw a
    non-finite loss back-propagated NaN); ZeRO-0 does not, so the ranks agree first (an all-reduced flag)."""
    if zero_stage == 0:
        import torch.distributed as dist

        local_ok = finite and all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
        flag = torch.tensor([1.0 if local_ok else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if flag.item() == 0.0:
            engine.zero_grad()
            return None
    engine.step()
    if not engine.was_step_applied():
        return None
    norm = engine.get_global_grad_norm()
    norm = float(norm) if norm is not None else float("nan")
    return norm if math.isfinite(norm) else None


def _to_device(mb, device: torch.device):
    """A MicroBatch with its tensors on `device` (a no-op on CPU)."""
    if device.type == "cpu":
        return mb
    return dataclasses.replace(mb, **{f.name: getattr(mb, f.name).to(device) for f in dataclasses.fields(mb)
                                      if getattr(mb, f.name) is not None})


def _batch_to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """The batch's per-token tensors on `device` (GPU ranks); the row-index bookkeeping stays on the CPU."""
    if device.type == "cpu":
        return batch
    moved = dataclasses.replace(batch, mask=batch.mask.to(device), rollout_logprobs=batch.rollout_logprobs.to(device),
                                group_ids=batch.group_ids.to(device), rewards=batch.rewards.to(device),
                                stats={k: v.to(device) for k, v in batch.stats.items()},
                                advantages=None if batch.advantages is None else batch.advantages.to(device))
    return moved
