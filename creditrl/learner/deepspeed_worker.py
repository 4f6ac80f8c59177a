"""One learner rank: a DeepSpeed engine (ZeRO 0-3, optional CPU offload, bf16) in a Ray actor.

The ranks form one torch.distributed group (gloo on CPU, NCCL on GPU). Each rank gets the whole
`RolloutBatch` and the step's `MiniPlan`s (creditrl/learner/dp_split.py) and processes its own rows with the
single-process math: `micro_batch_token_stats` for per-token stats and `Algorithm.loss` with an
`AggregationNorm` holding the GLOBAL mini-batch totals (tokens and sequences over all ranks).

Why the gradient equals the single-process one: the mini-batch loss is L = sum_r L_r, where L_r sums the
micro-batch losses of rank r, each normalised by the global totals. DeepSpeed averages gradients over the
world (divides the sum by W), so each rank back-propagates W * L_r and the reduced gradient is
(1/W) * sum_r W * grad L_r = grad L.

ZeRO-3 notes (architecture.md §2.4): the lm_head weight is used outside its module's forward (the fused
log-prob op takes `head.weight`), so it is registered as an external parameter of the wrapper module and is
gathered for the wrapper's forward; weight buckets are gathered with `GatheredParameters` on every rank in the
same order, sized by `ds_numel`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
from torch import Tensor

from creditrl.algorithms import Algorithm
from creditrl.algorithms.base import AggregationNorm, LossInputs
from creditrl.config.schema import RecipeConfig
from creditrl.learner.dp_split import MiniPlan
from creditrl.distributed.ds_config import deepspeed_config
from creditrl.weights.broadcast import TensorMeta, make_group, make_store, send_buckets
from creditrl.weights.buckets import ObjectStoreTransport, is_adapter_tensor, plan_buckets_by_numel
from creditrl.learner.batch import RolloutBatch, make_micro_batch, partition_by_tokens
from creditrl.models.build import load_causal_lm
from creditrl.models.schedule import lr_factor
from creditrl.learner.token_stats import decoder_and_head, micro_batch_token_stats

log = logging.getLogger(__name__)

DS_CHECKPOINT_DIR = "deepspeed"  # ZeRO shards (model, optimizer, scheduler) inside a creditrl checkpoint
DS_TAG = "state"


class TokenStatsModule(torch.nn.Module):
    """The DeepSpeed-wrapped module: forward = per-token stats of a micro-batch (so ZeRO hooks see it)."""

    def __init__(self, policy, temperature: float, autocast_bf16: bool):
        super().__init__()
        self.policy = policy
        self.temperature, self.autocast_bf16 = temperature, autocast_bf16

    def forward(self, mb, want: tuple[str, ...], keep_hidden: bool = False) -> dict[str, Tensor]:
        return micro_batch_token_stats(self.policy, mb, self.temperature, want, self.autocast_bf16,
                                       keep_hidden=keep_hidden)


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
        self.policy, self.ref = self._load_models(cfg)
        self.module = TokenStatsModule(self.policy, cfg.rollout.temperature, cfg.model.autocast_bf16)
        if rc.zero_stage == 3:
            deepspeed.zero.register_external_parameter(self.module, decoder_and_head(self.policy)[1].weight)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        tc = cfg.train
        if rc.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                         weight_decay=tc.weight_decay, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                          weight_decay=tc.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, total_optimizer_steps, tc.warmup_steps, tc.lr_schedule,
                                           tc.min_lr_ratio))
        self.engine, _, _, _ = deepspeed.initialize(model=self.module, optimizer=optimizer, lr_scheduler=scheduler,
                                                    model_parameters=params, config=deepspeed_config(cfg))
        self.skipped_microbatches = 0
        self._sync_store = self._sync_group = self._ipc = None  # weight-sync state (rank 0 / colocated GPU)
        self._sync_host, self._sync_groups_built = "", 0
        log.info("learner rank %d/%d up on %s (ZeRO-%d)", rank, world_size, socket.gethostname(), rc.zero_stage)

    # ---- setup -------------------------------------------------------------------------------------------
    def _load_models(self, cfg: RecipeConfig):
        mc = cfg.model
        policy = load_causal_lm(mc.path, mc.dtype)
        policy.config.use_cache = False
        if mc.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        ref = None
        if mc.lora.enabled:
            from peft import LoraConfig, get_peft_model

            lc = mc.lora
            policy = get_peft_model(policy, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                       target_modules=lc.target_modules, task_type="CAUSAL_LM"))
        elif "ref_logprobs" in Algorithm(cfg.algorithm).needs:
            ref = load_causal_lm(mc.path, mc.dtype).eval().to(self.device)  # full copy per rank (tiny models)
            ref.requires_grad_(False)
        return policy.to(self.device), ref

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

    def _stats(self, mb, want, keep_hidden=False) -> dict[str, Tensor]:
        return self.engine(_to_device(mb, self.device), want, keep_hidden)

    def _ref_context(self):
        if self.ref is None and self.cfg.model.lora.enabled:
            return self.policy.disable_adapter()
        return nullcontext()

    # ---- old / ref pass ----------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_old_stats(self, batch: RolloutBatch, needs: tuple[str, ...], plans: list[MiniPlan]) -> dict:
        """Per-token old stats of this rank's real rows: {"rows": [r], name: [r, T] tensors}."""
        batch = _batch_to(batch, self.device)
        want = ("logp", "entropy")
        keep_hidden = "old_hidden" in needs
        rows, parts = [], {k: [] for k in want + (("hidden",) if keep_hidden else ())}
        ref_parts = []
        self.engine.eval()
        for plan in plans:
            for spec in plan.micro[self.rank]:
                mb = make_micro_batch(batch, list(spec.rows), self.pad_id)
                stats = self._stats(mb, want, keep_hidden)
                ref_lp = None
                if "ref_logprobs" in needs:
                    if self.ref is not None:
                        ref_lp = micro_batch_token_stats(self.ref, _to_device(mb, self.device),
                                                         self.cfg.rollout.temperature, ("logp",),
                                                         self.cfg.model.autocast_bf16)["logp"]
                    else:
                        with self._ref_context():
                            ref_lp = self._stats(mb, ("logp",))["logp"]
                if not spec.real:
                    continue
                rows += list(spec.rows)
                for k in parts:
                    parts[k].append(stats[k].cpu())
                if ref_lp is not None:
                    ref_parts.append(ref_lp.cpu())
        self.engine.train()
        out = {"rows": rows}
        for k, v in parts.items():
            out[k] = _cat_padded(v)
        if ref_parts:
            out["ref_logp"] = _cat_padded(ref_parts)
        return out

    # ---- policy update -----------------------------------------------------------------------------------
    def _head_weight(self) -> Tensor:
        w = decoder_and_head(self.policy)[1].weight
        with self._gather([w]):
            return w.detach().clone()

    def _loss_inputs(self, batch: RolloutBatch, idx: Tensor, logp: Tensor, entropy: Tensor | None,
                     head_weight: Tensor | None) -> LossInputs:
        s = batch.stats
        extras = {}
        if "old_hidden" in s:
            extras["old_hidden"] = s["old_hidden"][idx]
            extras["lm_head_weight"] = head_weight
        return LossInputs(
            logprobs=logp,
            old_logprobs=s["old_logprobs"][idx],
            advantages=batch.advantages[idx],
            mask=batch.mask[idx],
            entropy=entropy,
            old_entropy=s["old_entropy"][idx] if "old_entropy" in s else None,
            ref_logprobs=s["ref_logprobs"][idx] if "ref_logprobs" in s else None,
            rollout_logprobs=batch.rollout_logprobs[idx],
            group_ids=batch.group_ids[idx],
            extras=extras,
        )

    def _prepare_scope(self, batch, rows, algorithm, current, head_weight) -> None:
        """token_stat_scope mini_batch / global: every rank prepares on the whole scope (same rows, same
        forward count on every rank, so ZeRO-3 gathers stay in lockstep)."""
        prepare = getattr(algorithm, "prepare", None)
        if prepare is None or algorithm.cfg.token_stat_scope == "micro_batch":
            return
        idx = torch.tensor(rows, dtype=torch.long)
        if current:
            lp = torch.zeros(len(rows), batch.mask.shape[1])
            ent = torch.zeros_like(lp)
            with torch.no_grad():
                lengths = [len(batch.prompt_ids[i]) + int(batch.mask[i].sum()) for i in rows]
                for part in partition_by_tokens(lengths, self.cfg.train.micro_batch_tokens_per_worker):
                    mb = make_micro_batch(batch, [rows[j] for j in part], self.pad_id)
                    st = self._stats(mb, ("logp", "entropy"))
                    pos = torch.tensor(part, dtype=torch.long)
                    lp[pos], ent[pos] = st["logp"].cpu(), st["entropy"].cpu()
        else:
            lp = batch.stats["old_logprobs"][idx]
            ent = batch.stats.get("old_entropy", torch.zeros_like(lp))[idx]
        prepare(self._loss_inputs(batch, idx, lp, ent, head_weight))

    def update(self, batch: RolloutBatch, algorithm: Algorithm, plans: list[MiniPlan]) -> dict:
        """ppo_epochs x mini-batches of DeepSpeed steps over this rank's micro-batches.

        Returns partial sums for the controller: token-weighted metric sums, the token weight, each
        mini-batch's loss share, grad norms, lr, and (rank 0) the algorithm state after the update.
        """
        batch = _batch_to(batch, self.device)
        want = ("logp", "entropy") if "entropy" in algorithm.needs else ("logp",)
        head_weight = self._head_weight() if "old_hidden" in batch.stats else None
        sums: dict[str, float] = {}
        weight_total = 0.0
        losses, grad_norms = [], []
        if algorithm.cfg.token_stat_scope == "global":
            self._prepare_scope(batch, list(range(len(batch))), algorithm, False, head_weight)
        for _ in range(self.cfg.train.ppo_epochs):
            for plan in plans:
                if algorithm.cfg.token_stat_scope == "mini_batch":
                    self._prepare_scope(batch, list(plan.rows), algorithm, True, head_weight)
                mask = batch.mask[list(plan.rows)]
                norm = AggregationNorm(num_tokens=mask.sum().clamp_min(1).item(),
                                       num_seqs=(mask.sum(-1) > 0).sum().clamp_min(1).item())
                mini_loss = 0.0
                for spec in plan.micro[self.rank]:
                    mb = make_micro_batch(batch, list(spec.rows), self.pad_id)
                    stats = self._stats(mb, want)
                    inputs = self._loss_inputs(batch, mb.index, stats["logp"], stats.get("entropy"), head_weight)
                    loss, metrics = algorithm.loss(inputs, norm)
                    if not spec.real or not torch.isfinite(loss):
                        if spec.real:
                            self.skipped_microbatches += 1
                            log.warning("rank %d: non-finite loss, micro-batch contributes no gradient", self.rank)
                        loss = (stats["logp"] * 0.0).sum()  # lockstep backward with a zero gradient
                        self.engine.backward(loss)
                        continue
                    self.engine.backward(loss * self.world)
                    mini_loss += loss.item()
                    w = float(mb.mask.sum())
                    weight_total += w
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + w * float(v)
                self.engine.step()
                losses.append(mini_loss)
                grad_norms.append(float(self.engine.get_global_grad_norm() or 0.0))
        return {"sums": sums, "weight": weight_total, "losses": losses, "grad_norms": grad_norms,
                "lr": self.engine.get_lr()[0], "skipped_microbatches": self.skipped_microbatches,
                "algorithm_state": algorithm.state_dict() if self.rank == 0 else None}

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
                                    client_state={"skipped_microbatches": self.skipped_microbatches})
        with self._gather(list(self.policy.parameters())):
            if self.rank == 0:
                self.policy.save_pretrained(d / "model")

    def load(self, directory: str) -> None:
        path = Path(directory) / DS_CHECKPOINT_DIR
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {directory} has no DeepSpeed state in {path} (was it written by "
                                    f"the single-process trainer? resume it with resources.backend=local)")
        _, client = self.engine.load_checkpoint(str(path), tag=DS_TAG)
        self.skipped_microbatches = (client or {}).get("skipped_microbatches", 0)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _to_device(mb, device: torch.device):
    """A MicroBatch with its tensors on `device` (a no-op on CPU)."""
    if device.type == "cpu":
        return mb
    return dataclasses.replace(mb, **{f.name: getattr(mb, f.name).to(device) for f in dataclasses.fields(mb)})


def _batch_to(batch: RolloutBatch, device: torch.device) -> RolloutBatch:
    """The batch's per-token tensors on `device` (GPU ranks); the row-index bookkeeping stays on the CPU."""
    if device.type == "cpu":
        return batch
    moved = dataclasses.replace(batch, mask=batch.mask.to(device), rollout_logprobs=batch.rollout_logprobs.to(device),
                                group_ids=batch.group_ids.to(device), rewards=batch.rewards.to(device),
                                stats={k: v.to(device) for k, v in batch.stats.items()},
                                advantages=None if batch.advantages is None else batch.advantages.to(device))
    return moved


def _cat_padded(parts: list[Tensor]) -> Tensor:
    """Concatenate [b_i, T_i(, H)] tensors along rows, right-padding the time axis with zeros."""
    if not parts:
        return torch.zeros(0, 0)
    t = max(p.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p, (0, 0, 0, t - p.shape[1]) if p.dim() == 3 else (0, t - p.shape[1]))
              for p in parts]
    return torch.cat(padded, 0)
