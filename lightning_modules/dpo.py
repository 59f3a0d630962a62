"""`DPOModule`: direct preference optimization (Mix-CPT's stage 2, format alignment; DPO at large).

Every batch holds the chosen and rejected rows of its pairs (`datamodules.preference`: rows
`[c_0 … c_{P-1}, r_0 … r_{P-1}]`, loss only on the responses). One forward of the root module gives
each row's summed response CE with its gradient (`per_row`); the policy's log-probability of a
response is minus that. The reference model's log-probabilities come from one of:

- `reference: precomputed` (default): computed once before training by the initial policy (the
  student before any step; a LoRA student with its adapters off), under `no_grad`, batched, and
  cached on disk keyed by a fingerprint of the model's source, its dtype and the tokenized pairs
  (`<reference_cache_dir>/<fingerprint>.pt`, written atomically). No teacher is built at all, so a
  step costs one SFT step on the same rows. Under DDP and FSDP2 each rank computes a strided share
  of the batches and all ranks all-gather the result (equal forward counts per rank, as FSDP
  needs); local rank 0 writes the file. A resumed run (or `validate`) reloads it; without the
  file, the initial model is rebuilt from its source to recompute it (adapters off for LoRA). FSDP1
  (`FSDPStrategy`) can load the file but not compute it (a `ConfigError` says what to do).
- `reference: teacher`: the frozen teacher (`lightning_modules.teacher`: a copy of the initial
  student, `frozen_8bit`, or `adapters_disabled` with LoRA) gives its row CE in the same forward.

The loss is `losses.dpo_loss` with `reduction="sum"`, so the base's division by `step_weight` (the
pairs of the whole optimizer step) gives the mean over pairs, exact under accumulation and world
size. `ipo` uses length-averaged log-probs (row sum / response targets, also for the reference).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from common import IGNORE_INDEX, ConfigError, resolve_path
from common.atomic import atomic_file
from lightning_modules.base import KEY, CausalLMModule, _as_dataclass
from lightning_modules.forward import CausalLMWithLoss
from lightning_modules.modeling import build_causal_lm
from lightning_modules.teacher import TeacherSettings
from losses import DPO_LOSS_TYPES, LossSpec, dpo_loss

log = logging.getLogger(__name__)

ReferenceKind = Literal["teacher", "precomputed"]
DPOLossType = Literal["sigmoid", "robust", "hinge", "ipo"]
REFERENCE_KINDS = ("teacher", "precomputed")
REFERENCE_VERSION = 1
DEFAULT_REFERENCE_CACHE_DIR = ".cache/adaptlm/reference_logps"

METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "logps/chosen",
    "logps/rejected",
)
"""The sums `compute_losses` returns (divided by the step's pairs when logged)."""


class DPOModule(CausalLMModule):
    """DPO on preference pairs against a frozen reference model (the initial policy).

    Logs, as means over the step's pairs: `train/loss`, `train/rewards/chosen` and
    `train/rewards/rejected` (the implicit rewards β·(π − ρ)), `train/rewards/margin`,
    `train/rewards/accuracy` (the fraction of pairs whose chosen reward is the larger) and
    `train/logps/chosen`, `train/logps/rejected` (the policy's summed response log-probs); on
    validation pairs the same under `val/<set>/...`.

    Args:
        beta: β > 0, the strength of the implicit KL penalty (IPO: its τ).
        loss_type: `sigmoid` (DPO), `robust` (robust DPO), `hinge` (SLiC) or `ipo` (IPO, on
            length-averaged log-probs); see `losses.preference`.
        label_smoothing: ε in [0, 0.5), the assumed label-flip rate (`sigmoid`: cDPO; `robust`).
        reference: Where the reference log-probs come from: `precomputed` (once, by the initial
            policy, cached on disk; no teacher in memory) or `teacher` (the frozen teacher, in the
            same forward).
        teacher: The reference model for `reference: teacher`: unset means `{kind: frozen}` (a copy
            of the initial student), or `{kind: adapters_disabled}` with `lora`. Not allowed with
            `precomputed`, whose reference is always the initial policy.
        chunk_size: Rows per chunk of the fused LM-head loss (None: chosen from vocabulary and
            device).
        reference_batch_size: Pairs per forward when precomputing reference log-probs.
        reference_cache_dir: Directory of the precomputed reference log-probs; unset means the
            data module's `reference_cache_dir` (`reference_logps/` beside its store cache),
            else `.cache/adaptlm/reference_logps`.
        **kwargs: The remaining `CausalLMModule` arguments (model source, dtype, lora, optimizer,
            lr_scheduler, ...). `loss` is built from `chunk_size`: leave it unset.
    """

    def __init__(
        self,
        beta: float = 0.1,
        loss_type: DPOLossType = "sigmoid",
        label_smoothing: float = 0.0,
        reference: ReferenceKind = "precomputed",
        teacher: TeacherSettings | None = None,
        chunk_size: int | None = None,
        reference_batch_size: int = 8,
        reference_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        _check_dpo_settings(beta, loss_type, label_smoothing, reference, reference_batch_size)
        spec = LossSpec(chunk_size=chunk_size)
        given = kwargs.pop("loss", None)
        if given is not None and _as_dataclass(given, LossSpec, f"{KEY}.loss") != spec:
            raise ConfigError(
                f"{KEY}.loss",
                "DPOModule builds its loss itself (its only setting is chunk_size); remove it",
            )
        teacher = _as_dataclass(teacher, TeacherSettings, f"{KEY}.teacher")
        if reference == "teacher" and teacher is None:
            teacher = TeacherSettings(
                kind="adapters_disabled" if kwargs.get("lora") is not None else "frozen"
            )
        if reference == "precomputed" and teacher is not None:
            raise ConfigError(
                f"{KEY}.teacher",
                "is used with reference: teacher only; reference: precomputed always scores with "
                "the initial policy (remove teacher, or set reference: teacher)",
            )
        super().__init__(loss=spec, teacher=teacher, **kwargs)
        self.beta = float(beta)
        self.loss_type = loss_type
        self.label_smoothing = float(label_smoothing)
        self.reference = reference
        self.reference_batch_size = int(reference_batch_size)
        self.reference_cache_dir = reference_cache_dir
        self._reference: dict[str, Tensor] = {}  # set name -> float32 [pairs, 2] (chosen, rejected)
        self._reference_keys: dict[str, str] = {}
        self._reference_device: dict[str, Tensor] = {}
        self._policy_is_initial = True
        self._pair_sums: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ the loss

    def compute_losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sums over the batch's pairs of the DPO loss and of the logged rewards and log-probs."""
        policy, reference = self._logps(batch, "train")
        return self.pair_sums(policy, reference, batch)

    def _logps(self, batch: dict[str, Tensor], set_name: str) -> tuple[Tensor, Tensor]:
        """`[2P]` log-probs of every row's response under the policy (with gradient) and the
        reference (without), chosen rows first."""
        if "pair_index" not in batch:
            raise ConfigError(
                "data.class_path",
                "DPOModule needs preference batches (pair_index, chosen and rejected rows): use "
                "datamodules.preference.PreferenceDataModule or a subclass",
            )
        use_teacher = self.reference == "teacher"
        out = self.student_loss(batch, per_row=True, use_teacher=use_teacher)
        policy = -out["row_ce"]
        if use_teacher:
            return policy, -out["teacher_row_ce"]
        return policy, self._reference_lookup(set_name, batch["pair_index"]).to(policy.dtype)

    def pair_sums(
        self, policy: Tensor, reference: Tensor, batch: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The `METRICS` summed over the batch's pairs from `[2P]` policy and reference log-probs.

        `rewards/accuracy` counts the pairs whose chosen reward is strictly the larger.
        """
        pairs = batch["pair_index"].numel()
        if policy.shape != (2 * pairs,) or reference.shape != (2 * pairs,):
            raise ValueError(
                f"expected {2 * pairs} rows (chosen then rejected), got policy "
                f"{tuple(policy.shape)}, reference {tuple(reference.shape)}"
            )
        ipo = self.loss_type == "ipo"
        if ipo:  # length-averaged: per response target
            targets = (batch["labels"][:, 1:] != IGNORE_INDEX).sum(dim=1).clamp_min(1)
            scored_policy, scored_reference = policy / targets, reference / targets
        else:
            scored_policy, scored_reference = policy, reference
        out = dpo_loss(
            scored_policy[:pairs],
            scored_policy[pairs:],
            scored_reference[:pairs],
            scored_reference[pairs:],
            beta=self.beta,
            loss_type=self.loss_type,
            label_smoothing=self.label_smoothing,
            average_log_prob=ipo,
            reduction="sum",
        )
        margin = out.chosen_rewards - out.rejected_rewards
        logps = policy.detach()
        return {
            "loss": out.loss,
            "rewards/chosen": out.chosen_rewards.sum(),
            "rewards/rejected": out.rejected_rewards.sum(),
            "rewards/margin": margin.sum(),
            "rewards/accuracy": (margin > 0).sum().to(margin.dtype),
            "logps/chosen": logps[:pairs].sum(),
            "logps/rejected": logps[pairs:].sum(),
        }

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The base's step; marks the student as no longer the initial policy."""
        self._policy_is_initial = False
        return super().training_step(batch, batch_idx)

    # ------------------------------------------------------------------ reference log-probs

    def on_fit_start(self) -> None:
        """Precompute (or load) the reference log-probs of the train and validation pairs."""
        super().on_fit_start()
        if self.reference == "precomputed":
            self.prepare_reference(self._preference_sets())

    def on_validation_start(self) -> None:
        """`validate` without `fit`: precompute (or load) the validation pairs' reference."""
        super().on_validation_start()
        if self.reference == "precomputed":
            sets = self._preference_sets()
            self.prepare_reference({k: v for k, v in sets.items() if k.startswith("val/")})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The student's weights now come from a checkpoint: it is not the initial policy."""
        super().on_load_checkpoint(checkpoint)
        self._policy_is_initial = False

    def _preference_sets(self) -> dict[str, Any]:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        sets = getattr(datamodule, "preference_sets", None)
        if sets is None:
            raise ConfigError(
                f"{KEY}.reference",
                "precomputed reference log-probs need the data module's pairs: use "
                "datamodules.preference.PreferenceDataModule (or a subclass), or "
                "reference: teacher",
            )
        return sets()

    def reference_dir(self) -> Path:
        """The directory of the precomputed reference log-probs."""
        if self.reference_cache_dir is not None:
            return Path(self.reference_cache_dir)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        return Path(getattr(datamodule, "reference_cache_dir", DEFAULT_REFERENCE_CACHE_DIR))

    def model_identity(self) -> dict[str, Any]:
        """What identifies the initial policy: its config and init seed, or its path (local
        files' names, sizes and modification times; a hub id's cached snapshot), and its dtype."""
        source = self.source
        identity: dict[str, Any] = {"dtype": self.hparams.dtype}
        if source.config is not None:
            identity.update(config=source.config, init_seed=source.init_seed)
            return identity
        name = resolve_path(source.name_or_path, key=f"{KEY}.model_name_or_path")
        path = Path(name).expanduser()
        identity["gguf_file"] = source.gguf_file
        if path.is_dir():
            identity["path"] = str(path.resolve())
            identity["files"] = sorted(
                [f.name, f.stat().st_size, f.stat().st_mtime_ns]
                for f in path.iterdir()
                if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".gguf")
            )
        else:
            identity["hub_id"] = name
            with contextlib.suppress(Exception):  # offline: the snapshot (commit) in the cache
                from huggingface_hub import try_to_load_from_cache

                cached = try_to_load_from_cache(name, "config.json")
                if isinstance(cached, str):
                    identity["snapshot"] = Path(cached).parent.name
        return identity

    def reference_fingerprint(self, pairs: Any) -> str:
        """The cache key of the reference log-probs of `pairs` (a `PreferencePairs`)."""
        payload = {
            "version": REFERENCE_VERSION,
            "model": self.model_identity(),
            "pairs": pairs.fingerprint,
            "rows": "summed response log-probs; chosen, rejected",
        }
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.blake2b(blob, digest_size=16).hexdigest()

    def prepare_reference(self, sets: dict[str, Any]) -> None:
        """Load or compute (on every rank together) the reference log-probs of every set."""
        collate = self.trainer.datamodule.collator()
        for name, pairs in sets.items():
            key = self.reference_fingerprint(pairs)
            if self._reference_keys.get(name) == key:
                continue
            path = self.reference_dir() / f"{key}.pt"
            values = _load_reference(path, key, len(pairs))
            if not self._on_every_rank(values is not None):
                log.info("reference log-probs of %s (%d pairs): computing", name, len(pairs))
                values = self._compute_reference(pairs, collate)
                if self.trainer.local_rank == 0:
                    _save_reference(path, key, values, name, self.model_identity())
                    log.info("reference log-probs of %s: cached in %s", name, path)
            else:
                log.info("reference log-probs of %s: loaded from %s", name, path)
            self._reference[name] = values
            self._reference_keys[name] = key
            self._reference_device.pop(name, None)

    def reference_logps(self, set_name: str) -> Tensor:
        """float32 `[pairs, 2]` (chosen, rejected) summed reference log-probs of a prepared set."""
        if set_name not in self._reference:
            raise RuntimeError(
                f"no reference log-probs for {set_name!r}; prepared: {list(self._reference)}"
            )
        return self._reference[set_name]

    def _reference_lookup(self, set_name: str, pair_index: Tensor) -> Tensor:
        """`[2P]` reference log-probs of the batch's pairs (chosen first), from the table."""
        table = self._reference_device.get(set_name)
        if table is None or table.device != pair_index.device:
            table = self.reference_logps(set_name).to(pair_index.device)
            self._reference_device[set_name] = table
        if pair_index.numel() and int(pair_index.max()) >= table.shape[0]:
            raise RuntimeError(
                f"pair {int(pair_index.max())} beyond the {table.shape[0]} reference log-probs of "
                f"{set_name!r}: the data changed after they were prepared"
            )
        rows = table[pair_index]
        return torch.cat([rows[:, 0], rows[:, 1]])

    def _on_every_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (one all-gather under several ranks)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        gathered = trainer.strategy.all_gather(torch.tensor([float(flag)], device=self.device))
        return bool(gathered.min() > 0)

    @contextlib.contextmanager
    def _initial_policy(self) -> Iterator[nn.Module]:
        """The initial policy's root module, in eval mode: the student itself before any step (a
        LoRA student with its adapters off at any time), else a copy rebuilt from its source."""
        root: nn.Module = self.lm
        adapters = contextlib.nullcontext()
        if self.lora_settings is not None:
            adapters = self.student.disable_adapter()
        elif not self._policy_is_initial:
            log.info("reference log-probs: rebuilding the initial model from its source")
            hp = self.hparams
            model = build_causal_lm(
                self.source,
                self.tokenizer,
                dtype=hp.dtype,
                attn_implementation=hp.attn_implementation,
                max_length=hp.max_length,
                key=KEY,
            )
            root = CausalLMWithLoss(model).to(self.device)
        modes = {module: module.training for module in root.modules()}
        root.eval()
        try:
            with adapters:
                yield root
        finally:
            for module, training in modes.items():
                module.training = training

    def _compute_reference(self, pairs: Any, collate: Any) -> Tensor:
        """float32 `[pairs, 2]`: batch `j` of `reference_batch_size` consecutive pairs is computed
        by rank `j % world`; every rank runs the same number of forwards (padding batches that are
        discarded) and the shares are all-gathered."""
        trainer = self._trainer
        _check_strategy(trainer)
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        size, n = self.reference_batch_size, len(pairs)
        batches = math.ceil(n / size)
        per_rank = math.ceil(batches / world)
        out = torch.full((per_rank, size, 2), float("nan"), device=self.device)
        forward = trainer.precision_plugin.forward_context() if trainer is not None else None
        with self._initial_policy() as root, torch.no_grad(), forward or contextlib.nullcontext():
            for k in range(per_rank):
                j = k * world + rank
                real = j < batches
                first = j * size if real else 0
                indices = range(first, min(n, first + size))
                batch = collate([pairs[i] for i in indices])
                batch = {key: value.to(self.device) for key, value in batch.items()}
                row_ce = root(
                    batch["input_ids"],
                    batch["labels"],
                    self.loss_spec,
                    position_ids=batch["position_ids"],
                    attention_mask=batch["attention_mask"],
                    per_row=True,
                )["row_ce"].float()
                if real:
                    count = len(indices)
                    out[k, :count, 0] = -row_ce[:count]
                    out[k, :count, 1] = -row_ce[count:]
        gathered = trainer.strategy.all_gather(out) if world > 1 else out[None]
        values = gathered.transpose(0, 1).reshape(-1, 2)[:n].cpu()
        if bool(values.isnan().any()):
            raise RuntimeError("reference log-probs: some pairs were not computed")
        return values.clone()

    # ------------------------------------------------------------------ validation

    def validation_step(
        self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Accumulate the DPO sums of a batch of validation pairs (plain batches: the base's
        perplexity)."""
        if "pair_index" not in batch:
            return super().validation_step(batch, batch_idx, dataloader_idx)
        name = self._eval_set_name(dataloader_idx)
        policy, reference = self._logps(batch, f"val/{name}")
        sums = self.pair_sums(policy, reference, batch)
        values = torch.stack([sums[m].detach().double() for m in METRICS])
        pairs = torch.tensor([float(batch["pair_index"].numel())], dtype=torch.float64)
        values = torch.cat([values, pairs.to(values.device)])
        if name in self._pair_sums:
            self._pair_sums[name] = self._pair_sums[name] + values
        else:
            self._pair_sums[name] = values

    def _log_pair_sums(self, prefix: str) -> None:
        """Log `<prefix>/<set>/<metric>`: means over the set's pairs (all ranks)."""
        for name, sums in self._pair_sums.items():
            if self.trainer.world_size > 1:
                sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            means = (sums[:-1] / sums[-1].clamp_min(1)).float()
            for metric, value in zip(METRICS, means):
                self.log(f"{prefix}/{name}/{metric}", value, rank_zero_only=True)
        self._pair_sums = {}

    def on_validation_epoch_end(self) -> None:
        """Log the validation pairs' loss, rewards, margin, accuracy and log-probs."""
        self._log_pair_sums("val")
        super().on_validation_epoch_end()

    def on_test_epoch_end(self) -> None:
        """As `on_validation_epoch_end`, under `test/`."""
        self._log_pair_sums("test")
        super().on_test_epoch_end()


def _check_dpo_settings(
    beta: float,
    loss_type: str,
    label_smoothing: float,
    reference: str,
    reference_batch_size: int,
) -> None:
    """`ConfigError`s naming the key of an invalid DPO setting."""
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
        raise ConfigError(f"{KEY}.beta", f"must be a number > 0, got {beta!r}")
    if not math.isfinite(beta):
        raise ConfigError(f"{KEY}.beta", f"must be finite, got {beta!r}")
    if loss_type not in DPO_LOSS_TYPES:
        raise ConfigError(
            f"{KEY}.loss_type", f"must be one of {list(DPO_LOSS_TYPES)}, got {loss_type!r}"
        )
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"{KEY}.label_smoothing", f"must lie in [0, 0.5), got {label_smoothing!r}"
        )
    if label_smoothing and loss_type not in ("sigmoid", "robust"):
        raise ConfigError(
            f"{KEY}.label_smoothing",
            f"applies to the sigmoid and robust losses, not {loss_type!r}; set it to 0",
        )
    if reference not in REFERENCE_KINDS:
        raise ConfigError(
            f"{KEY}.reference", f"must be one of {list(REFERENCE_KINDS)}, got {reference!r}"
        )
    if (
        isinstance(reference_batch_size, bool)
        or not isinstance(reference_batch_size, int)
        or reference_batch_size < 1
    ):
        raise ConfigError(
            f"{KEY}.reference_batch_size", f"must be an integer >= 1, got {reference_batch_size!r}"
        )


def _check_strategy(trainer: Any) -> None:
    """FSDP1 keeps the root unit's parameters (embeddings, LM head) sharded outside the wrapped
    training forward, where the reference would run: a `ConfigError` saying what works instead."""
    from lightning.pytorch.strategies import FSDPStrategy

    if trainer is not None and isinstance(trainer.strategy, FSDPStrategy):
        raise ConfigError(
            "trainer.strategy",
            "DPOModule cannot precompute reference log-probs under FSDPStrategy (FSDP1): use "
            "ModelParallelStrategy (FSDP2) or DDP, or run once on one device to fill the cache "
            "(reused under any strategy), or set model.init_args.reference: teacher",
        )


def _load_reference(path: Path, key: str, pairs: int) -> Tensor | None:
    """The cached `[pairs, 2]` log-probs at `path` if they are there and match `key`, else None."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        logps = data["logps"]
        valid = data.get("fingerprint") == key and tuple(logps.shape) == (pairs, 2)
    except Exception as err:  # an unreadable file is recomputed, not fatal
        log.warning("ignoring unreadable reference log-probs %s: %s", path, err)
        return None
    if not valid:
        log.warning("ignoring reference log-probs %s: they do not match this run", path)
        return None
    return logps.to(torch.float32)


def _save_reference(
    path: Path, key: str, values: Tensor, name: str, identity: dict[str, Any]
) -> None:
    """Write the log-probs atomically (staged beside `path`, fsynced, renamed)."""
    payload = {
        "version": REFERENCE_VERSION,
        "fingerprint": key,
        "logps": values.to(torch.float32).contiguous(),
        "set": name,
        "model": json.dumps(identity, sort_keys=True, default=str),
    }
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


__all__ = ["DEFAULT_REFERENCE_CACHE_DIR", "METRICS", "REFERENCE_KINDS", "DPOModule"]
