"""``SparsityAwareLR``: per-parameter learning-rate multipliers from measured gradient sparsity.

Works with any ``torch.optim`` optimizer:

```python
trainer = L.Trainer(callbacks=[SparsityAwareLR()])
```

What it does, step by step:

1. **At fit start** it picks the *tracked* parameters (by default the weights of every
   ``nn.Embedding`` / ``nn.EmbeddingBag``) and moves each into its own param group, copied from
   the group it was in (all settings kept; optimizer state is keyed by parameter, so it is kept
   too). LR schedulers are told about the new groups, so they schedule them exactly as before.
   The split depends only on the model's structure, so a resumed run rebuilds the same groups
   before Lightning loads the optimizer state.
2. **Before every optimizer step** it finds, for each tracked parameter, the rows (dim 0) whose
   gradient is non-zero (for an embedding, read off the indices it looked up: see
   ``embedding_lookups``) and adds their count and per-row hit counts up
   on the device, with no host read. Every ``every_n_steps`` steps (and at the first) one host read
   folds the mean share of rows touched per step into a moving average (see
   [`GradientSparsityTracker`][lightning_geo.callbacks.GradientSparsityTracker]), and the multipliers are
   set from it. Each tracked group's LR is then multiplied by:

    ```python
    multiplier = min(max_multiplier, max(1, row_density ** -power))
    ```

    where ``row_density`` is the moving average of the share of the parameter's rows touched per
    step. With the default ``power=0.5`` an embedding whose batches touch 4% of its rows gets 5x
    the LR of the rest of the model: each of its rows is updated in few steps, so each of those
    steps is allowed to be larger (the Adagrad-style ``1/sqrt(frequency)`` rule applied to a whole
    parameter). The multiplier is applied just before ``optimizer.step()`` and removed just after
    (an optimizer step post-hook), so the value an LR scheduler reads and writes is never the
    multiplied one: the callback composes with any scheduler by multiplication and never fights it.
    A step that the AMP ``GradScaler`` will skip (non-finite gradients) gets no multiplier.

3. **Weight decay on untouched rows** (``decay_rows``): ``"all"`` leaves weight decay to the
   optimizer (every row decays every step, as in AdamW). ``"touched"`` suspends the optimizer's
   own ``weight_decay`` for the tracked groups during the step and applies decoupled decay
   ``row *= 1 - lr * weight_decay`` only to rows with a gradient.

Under DDP the per-step densities are averaged over ranks (one small all-reduce per measurement), so
every rank computes the same multipliers; gradients are already identical after DDP's all-reduce,
so hit counts agree without communication.

Logged under ``geo/sparsity/`` (at Lightning's ``log_every_n_steps`` cadence), for the parameters the
rule acts on: ``<param>/row_density``, ``<param>/lr_multiplier`` and a histogram ``<param>/row_hits`` of
per-row hit counts (TensorBoard only). ``log_untracked=True`` also measures every other parameter on
logging steps (row and element density: a diagnostic that costs a host read per parameter).

Where the rule cannot act, the callback says so once and leaves the parameter's LR alone
(``SparsityAwareLR.not_acting_on`` names them with the reason):

- an embedding tied to the output head (GPT-2's ``wte``/``lm_head``): the head gives every row a gradient
  every step, so the parameter is dense however few tokens the batch looks up;
- an embedding looked up by position, absolute or relative (GPT-2's ``wpe``, T5's ``relative_attention_bias``,
  any learned position or distance table): its row "density" is the window length over the context, not token
  rarity, and a boost would follow the sequence-length curriculum, not the data. It is found from its indices
  at its first training forward (indices that do not depend on the data: counting up by one, the same for every
  batch item, or a function of query and key positions: see ``embedding_lookups.position_lookup_reason``) or,
  where the indices say nothing, from its name (``wpe``, ``position...``, ``pos_emb...``,
  ``relative_attention_bias``: see [`position_name_hint`][lightning_geo.utils.positions.position_name_hint]).
  ``SparsityAwareLR.positional`` names them with how they were found, and an optimizer with a
  ``mark_positional`` method ([`GeoAdamW`][lightning_geo.optim.GeoAdamW]) is told to take them off its row rule.

With [`GeoAdamW`][lightning_geo.optim.GeoAdamW], which applies the same density rule per parameter (and
a row-frequency rule per row) itself, the callback measures and logs but sets no multipliers (it
says so once). It tells such an optimizer by its class attribute ``applies_row_density_rule = True``
(``applies_row_density_rule``), so an optimizer of your own can say the same.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_geo.callbacks.embedding_lookups import (
    EmbeddingLookupRecorder,
    PositionLookupCheck,
    is_tied,
    lookup_trackable,
)
from lightning_geo.callbacks.sparsity_stats import GradientSparsityTracker
from lightning_geo.utils import (
    DashboardSection,
    is_log_step,
    local_part,
    log_geo_histogram,
    log_geo_scalars,
    reduce_tensor,
)
from lightning_geo.utils.param_groups import isolate_parameters
from lightning_geo.utils.positions import POSITION_HINT_METHOD, position_name_hint
from lightning_geo.utils.rows import applies_row_density_rule, touched_rows

DECAY_ROWS = ("all", "touched")
PARAM_SELECTORS = ("embeddings", "all")


def _positive_number(name: str, value: Any, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SparsityAwareLR: `{name}` must be a number, got {type(value).__name__}")
    ok = value >= minimum if inclusive else value > minimum
    if not ok or value != value or value == float("inf"):
        relation = ">=" if inclusive else ">"
        raise ValueError(f"SparsityAwareLR: `{name}` must be finite and {relation} {minimum}, got {value}")
    return float(value)


def density_multiplier(row_density: float, power: float, max_multiplier: float) -> float:
    """The LR multiplier for a parameter whose rows are touched with density ``row_density`` in [0, 1].

    ``min(max_multiplier, max(1, row_density ** -power))``; a density of 0 gives ``max_multiplier``.
    """
    if row_density <= 0.0:
        return max_multiplier
    return min(max_multiplier, max(1.0, row_density**-power))


class SparsityAwareLR(pl.Callback):
    """Scale the learning rate of sparsely-updated parameters by a function of their gradient density.

    Args:
        params: which parameters are tracked (own param group, LR multiplier, hit counts):
            ``"embeddings"`` (default: weights of ``nn.Embedding`` and ``nn.EmbeddingBag``),
            ``"all"`` (every trainable parameter with two or more dimensions), or a sequence of
            ``fnmatch`` patterns over parameter names (``["encoder.tok_emb.*", "head.weight"]``).
        power: exponent of the density rule above (default 0.5; 0 gives multiplier 1).
        max_multiplier: upper bound of a multiplier (default 10.0, >= 1).
        ema: weight of the old value in the density moving averages, in [0, 1) (default 0.9).
        every_n_steps: read the tracked parameters' accumulated row counts (one host sync for all of
            them) and update the multipliers every n optimizer steps (default 10); every step is
            counted in between, on the device. The moving average then weighs the n steps' mean
            density by ``1 - ema ** n``, the same time constant in steps as reading every step.
        decay_rows: ``"all"`` (default, the optimizer decays as usual) or ``"touched"`` (decoupled
            weight decay on tracked parameters only for rows with a gradient; see module docs).
        scale_lr: set LR multipliers (default True); False only measures and logs.
        log_histograms: log the per-row hit-count histogram of tracked parameters (default True).
        log_untracked: on logging steps, also measure and log row and element density of every other
            parameter, and the element density of tracked ones (default False: a diagnostic, one host
            read per parameter).
    """

    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "sparsity",
        {
            "row density per parameter (share of rows with a gradient)": (r"^geo/sparsity/.+/row_density$",),
            "element density per parameter (share of non-zero gradient elements)": (
                r"^geo/sparsity/.+/element_density$",
            ),
            "LR multiplier per parameter": (r"^geo/sparsity/.+/lr_multiplier$",),
        },
    )
    """This part's section of the GEO dashboard (see ``lightning_geo.utils.dashboard``)."""

    def __init__(
        self,
        params: str | Sequence[str] = "embeddings",
        power: float = 0.5,
        max_multiplier: float = 10.0,
        ema: float = 0.9,
        every_n_steps: int = 10,
        decay_rows: str = "all",
        scale_lr: bool = True,
        log_histograms: bool = True,
        log_untracked: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(params, str):
            if params not in PARAM_SELECTORS:
                raise ValueError(
                    f"SparsityAwareLR: `params` must be one of {PARAM_SELECTORS} or a list of name patterns, "
                    f"got {params!r}"
                )
        elif not isinstance(params, Sequence) or not params or not all(isinstance(p, str) for p in params):
            raise TypeError(f"SparsityAwareLR: `params` must be a non-empty list of name patterns, got {params!r}")
        self.params = params if isinstance(params, str) else tuple(params)
        self.power = _positive_number("power", power)
        self.max_multiplier = _positive_number("max_multiplier", max_multiplier, minimum=1.0)
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0.0 <= ema < 1.0:
            raise ValueError(f"SparsityAwareLR: `ema` must be a number in [0, 1), got {ema!r}")
        self.ema = float(ema)
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"SparsityAwareLR: `every_n_steps` must be an int >= 1, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        if decay_rows not in DECAY_ROWS:
            raise ValueError(f"SparsityAwareLR: `decay_rows` must be one of {DECAY_ROWS}, got {decay_rows!r}")
        self.decay_rows = decay_rows
        if not isinstance(scale_lr, bool):
            raise TypeError(f"SparsityAwareLR: `scale_lr` must be a bool, got {scale_lr!r}")
        self.scale_lr = scale_lr
        if not isinstance(log_histograms, bool):
            raise TypeError(f"SparsityAwareLR: `log_histograms` must be a bool, got {log_histograms!r}")
        self.log_histograms = log_histograms
        if not isinstance(log_untracked, bool):
            raise TypeError(f"SparsityAwareLR: `log_untracked` must be a bool, got {log_untracked!r}")
        self.log_untracked = log_untracked

        self.tracker: GradientSparsityTracker | None = None
        self.tracked: tuple[str, ...] = ()
        self.multipliers: dict[str, float] = {}
        self._names: dict[int, str] = {}
        self._optimizer_names: dict[int, list[str]] = {}
        self._groups: dict[int, list[tuple[int, str]]] = {}  # id(optimizer) -> [(group index, name)]
        self._scaling_optimizers: set[int] = set()
        self._scaled_names: set[str] = set()
        self._pending: dict[int, list[tuple[dict[str, Any], str, Any, Any]]] = {}
        self._hooks: list[Any] = []
        self._loaded_state: dict[str, Any] | None = None
        self._lookups: EmbeddingLookupRecorder | None = None
        self._position_check: PositionLookupCheck | None = None
        self.not_acting_on: dict[str, str] = {}  # tracked parameter -> why the rule cannot act on it
        self.positional: dict[str, str] = {}  # tracked embedding found looked up by position -> how it was found
        self._told_optimizers: set[str] = set()  # positional names passed to the optimizers' `mark_positional`
        self._warned_skipped_restore = False

    # ----------------------------------------------------------------- selection and set-up
    def select_parameters(self, module: nn.Module) -> list[str]:
        """Names of the parameters of ``module`` this callback tracks, in module order."""
        trainable = {n for n, p in module.named_parameters() if p.requires_grad}
        if self.params == "embeddings":
            names = []
            for module_name, child in module.named_modules():
                if isinstance(child, (nn.Embedding, nn.EmbeddingBag)):
                    name = f"{module_name}.weight" if module_name else "weight"
                    if name in trainable and name not in names:
                        names.append(name)
            return names
        if self.params == "all":
            return [n for n, p in module.named_parameters() if p.requires_grad and p.dim() >= 2]
        return [n for n, _ in module.named_parameters() if n in trainable and self._matches(n)]

    def _matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.params)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Pick tracked parameters, split their param groups, register the step post-hooks."""
        self.tracked = tuple(self.select_parameters(pl_module))
        if not self.tracked:
            rank_zero_warn(
                f"SparsityAwareLR: no parameter matches params={self.params!r}; it will only measure and log "
                "gradient sparsity."
            )
        self.tracker = GradientSparsityTracker(pl_module.named_parameters(), ema=self.ema, hit_count_names=self.tracked)
        if self._loaded_state is not None:
            self.tracker.load_state_dict(self._loaded_state["tracker"])
            self._loaded_state = None
        self._names = {id(p): n for n, p in pl_module.named_parameters()}
        self._watch_lookups(pl_module)
        self._find_where_the_rule_cannot_act(pl_module)
        self._optimizer_names = {}
        by_name = dict(pl_module.named_parameters())
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self._groups, self._scaling_optimizers, self._scaled_names = {}, set(), set()
        for optimizer in trainer.optimizers:
            if applies_row_density_rule(optimizer):
                rank_zero_info(
                    f"SparsityAwareLR: the optimizer is {type(optimizer).__name__}, which scales steps by row "
                    "frequency and parameter density already; "
                    "the callback measures and logs sparsity but sets no LR multipliers for it."
                )
                continue
            if not (self.scale_lr or self.decay_rows == "touched"):
                continue
            placement = isolate_parameters(optimizer, [by_name[n] for n in self.tracked], schedulers)
            groups = [(placement[id(by_name[n])], n) for n in self.tracked if id(by_name[n]) in placement]
            if groups:
                self._groups[id(optimizer)] = groups
                self._scaling_optimizers.add(id(optimizer))
                self._scaled_names.update(n for _, n in groups)
                self._hooks.append(optimizer.register_step_post_hook(self._restore_after_step))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the optimizer hooks (the param-group split stays: the optimizer's state depends on it)."""
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the optimizer hooks if fit ended abnormally."""
        self._remove_hooks()

    def _watch_lookups(self, pl_module: pl.LightningModule) -> None:
        if self._lookups is not None:
            self._lookups.remove()
        modules: dict[str, nn.Embedding | nn.EmbeddingBag] = {}
        for name in self.tracked:
            owner, _, leaf = name.rpartition(".")
            module = pl_module.get_submodule(owner)
            if leaf == "weight" and lookup_trackable(module, pl_module):
                modules[name] = module
        self._lookups = EmbeddingLookupRecorder(modules) if modules else None

    def _find_where_the_rule_cannot_act(self, pl_module: pl.LightningModule) -> None:
        self.not_acting_on, self.positional, self._told_optimizers = {}, {}, set()
        embeddings = {}
        shared_names: dict[int, list[str]] = {}
        for name, param in pl_module.named_parameters(remove_duplicate=False):
            shared_names.setdefault(id(param), []).append(name)
        for name in self.tracked:
            owner, _, leaf = name.rpartition(".")
            module = pl_module.get_submodule(owner)
            if leaf != "weight" or not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                continue
            if is_tied(module, pl_module):
                others = [n for n in shared_names[id(module.weight)] if n != name]
                self._not_acting(name, f"tied with {others}: that output head gives every row a gradient each step, "
                                       "so the parameter is dense whatever the batch looks up")
            else:
                embeddings[name] = module
        if self._position_check is not None:
            self._position_check.remove()
        self._position_check = PositionLookupCheck(embeddings) if embeddings else None
        acting = [n for n in self.tracked if n not in self.not_acting_on]
        rank_zero_info(f"SparsityAwareLR: tracks {acting or 'no parameter'} (LR multipliers from row density).")

    def _not_acting(self, name: str, reason: str) -> None:
        if name not in self.not_acting_on:
            self.not_acting_on[name] = reason
            self.multipliers.pop(name, None)
            rank_zero_warn(f"SparsityAwareLR: the density rule cannot act on {name!r}: {reason}. Its learning rate "
                           "is left as the optimizer has it (multiplier 1).")

    def _positional(self, name: str, why: str) -> None:
        self.positional[name] = why
        self._not_acting(name, f"{why}; its row density follows the sequence length, not token rarity")

    def _note_position_lookups(self, trainer: pl.Trainer) -> None:
        """Name the embeddings the first training forward found looked up by position (once each), and tell an
        optimizer that applies the row rule itself (``GeoAdamW``) to take them off it."""
        check = self._position_check
        if check is not None:
            checked, found, done = self._agreed_position_check(trainer, check)
            for name in sorted(checked - set(self.positional)):
                if name in found:
                    self._positional(name, f"it is looked up by position: {check.positional[name]}")
                elif position_name_hint(name):  # the indices said nothing (e.g. one position), the name does
                    self._positional(name, "it is looked up by position, as its name says")
            if done:
                check.remove()
                self._position_check = None
        if len(self._told_optimizers) == len(self.positional):
            return
        for name in self.positional:
            if name in self._told_optimizers:
                continue
            self._told_optimizers.add(name)
            param = self.tracker.parameters[name] if self.tracker is not None else None
            for optimizer in trainer.optimizers:
                mark = getattr(optimizer, POSITION_HINT_METHOD, None)
                if param is not None and callable(mark):
                    mark(param, self.positional[name], name=name)

    @staticmethod
    def _agreed_position_check(trainer: pl.Trainer, check: PositionLookupCheck) -> tuple[set[str], set[str], bool]:
        """The embeddings checked, those found positional and whether the check is done, agreed by every rank.

        Each rank looks at its own first batch; acting on one rank's finding alone would take an embedding off
        the density rule on that rank only, and its row masks' all-reduce would then wait forever for it. A name
        counts as checked once every rank checked it, and as positional only if every rank found it so.
        """
        if trainer.world_size == 1:
            return set(check.checked), set(check.positional), check.done
        flags = torch.tensor([[float(name in check.checked) for name in check.names],
                              [float(name in check.positional) for name in check.names]])
        agreed = reduce_tensor(trainer, flags, "min")
        checked = {name for name, flag in zip(check.names, agreed[0].tolist(), strict=True) if flag}
        found = {name for name, flag in zip(check.names, agreed[1].tolist(), strict=True) if flag}
        return checked, found, len(checked) == len(check.names)

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._position_check is not None:
            self._position_check.remove()
            self._position_check = None
        if self._lookups is not None:
            self._lookups.remove()
            self._lookups = None

    # ----------------------------------------------------------------- the step
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        """Measure sparsity, set this step's LR multipliers and (optionally) decay touched rows only."""
        if self.tracker is None:
            return
        self._note_position_lookups(trainer)
        names = self._optimizer_names.get(id(optimizer))
        if names is None:
            names = [self._names[id(p)] for g in optimizer.param_groups for p in g["params"] if id(p) in self._names]
            self._optimizer_names[id(optimizer)] = names
        logging = bool(trainer.loggers) and is_log_step(trainer)
        active = [n for n in names if n in self.tracked and n not in self.not_acting_on]
        touched = self._looked_up_rows(trainer, active)
        for name in active:
            grad = self.tracker.parameters[name].grad
            if grad is None:  # no backward this step (training_step returned None): nothing was touched
                touched.pop(name, None)
            elif name not in touched:
                touched[name] = touched_rows(local_part(grad))
        if self._lookups is not None:
            self._lookups.clear()  # the rest (parameters the rule cannot act on) is not needed
        self.tracker.accumulate(touched)
        if self.tracker.measurements == 0 or self.tracker.pending_steps >= self.every_n_steps:
            reduce = (lambda t: reduce_tensor(trainer, t, "mean")) if trainer.world_size > 1 else None
            self.tracker.flush(reduce=reduce)
            for name in active:
                if name in self.tracker.row_density:
                    self.multipliers[name] = density_multiplier(
                        self.tracker.row_density[name], self.power, self.max_multiplier
                    )
        if logging and self.log_untracked:
            others = [n for n in names if n not in active]
            current = self.tracker.measure(others, count_elements=True)
            current.update({n: (math.nan, d[1]) for n, d in self.tracker.measure(active).items()})
            reduce = (lambda t: reduce_tensor(trainer, t, "mean")) if trainer.world_size > 1 else None
            self.tracker.update_diagnostics(current, reduce=reduce)
        # Only the row decay acts on the weights before the step, so only it must know whether a GradScaler will
        # skip the step (a host read); multipliers of a skipped step are undone at the end of the batch.
        decays = self.decay_rows == "touched"
        if id(optimizer) in self._scaling_optimizers and not (decays and _step_will_be_skipped(trainer, optimizer)):
            self._apply(optimizer, touched)
        if logging:
            self._log(trainer, names)

    def _looked_up_rows(self, trainer: pl.Trainer, names: list[str]) -> dict[str, Tensor]:
        """Touched-row masks of tracked embeddings from their looked-up indices (taken every step).

        Under DDP the gradient is the union of every rank's lookups, so the masks are OR-ed over ranks.
        """
        if self._lookups is None:
            return {}
        known: dict[str, Tensor] = {}
        for name in names:
            mask = self._lookups.take(name)
            if mask is None:
                continue
            if trainer.world_size > 1:
                mask = reduce_tensor(trainer, mask.to(torch.float32), "max") > 0
            known[name] = mask
        return known

    def _apply(self, optimizer: Optimizer, touched: dict[str, Tensor]) -> None:
        """Multiply the tracked groups' LRs; with ``decay_rows="touched"`` decay their touched rows.

        ``touched`` holds the row masks measured this step (reused, not recomputed); others are read
        off the gradient.
        """
        pending = self._pending.setdefault(id(optimizer), [])
        for index, name in self._groups[id(optimizer)]:
            group = optimizer.param_groups[index]
            multiplier = self.multipliers.get(name, 1.0) if self.scale_lr else 1.0
            if multiplier != 1.0:
                base = group["lr"]
                group["lr"] = base * multiplier
                pending.append((group, "lr", base, group["lr"]))
            weight_decay = group.get("weight_decay", 0.0)
            if self.decay_rows == "touched" and weight_decay:
                pending.append((group, "weight_decay", weight_decay, 0.0))
                group["weight_decay"] = 0.0
                param = group["params"][0]  # a tracked group holds its one parameter
                if param.grad is not None:
                    # a sharded (FSDP2) parameter decays this rank's rows, read off this rank's gradient shard
                    local = local_part(param)
                    mask = touched.get(name)
                    if mask is None or mask.numel() != local.shape[0]:
                        mask = touched_rows(local_part(param.grad))
                    shape = (-1,) + (1,) * max(param.dim() - 1, 0)
                    with torch.no_grad():
                        local.mul_((1.0 - float(group["lr"]) * weight_decay * mask.to(local.dtype)).view(shape))

    def _restore_after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group, key, original, _ in reversed(self._pending.pop(id(optimizer), [])):
            group[key] = original

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """At the first micro-batch of an optimizer step, forget lookups of a step that never ran."""
        if self._lookups is not None and batch_idx % trainer.accumulate_grad_batches == 0:
            self._lookups.clear()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Undo multipliers of a step that did not run (skipped by an AMP scaler the callback could not see)."""
        for optimizer_id in list(self._pending):
            for group, key, original, applied in reversed(self._pending.pop(optimizer_id)):
                if group[key] is applied or group[key] == applied:
                    group[key] = original
                elif not self._warned_skipped_restore:
                    self._warned_skipped_restore = True
                    rank_zero_warn(
                        "SparsityAwareLR: an optimizer step was skipped after the multipliers were applied and "
                        f"something changed `{key}` before they could be removed; leaving the new value as is."
                    )

    def _log(self, trainer: pl.Trainer, names: list[str]) -> None:
        assert self.tracker is not None  # built at fit start
        values: dict[str, float] = {}
        acting = set(self.tracked) - set(self.not_acting_on)
        for name in names:
            if name not in acting and not self.log_untracked:
                continue
            if name in self.tracker.row_density:
                values[f"{name}/row_density"] = self.tracker.row_density[name]
            if name in self.tracker.element_density:
                values[f"{name}/element_density"] = self.tracker.element_density[name]
        for name in self.tracked:
            if name in names and name in self.multipliers and name not in self.not_acting_on:
                scaled = self.scale_lr and name in self._scaled_names
                values[f"{name}/lr_multiplier"] = self.multipliers[name] if scaled else 1.0
        log_geo_scalars(trainer, "sparsity", values)
        if self.log_histograms:
            for name in self.tracked:
                if name not in acting:
                    continue
                counts = self.tracker.hit_counts.get(name)
                if name in names and counts is not None:
                    log_geo_histogram(trainer, "sparsity", f"{name}/row_hits", counts.float())

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Statistics and multipliers, so a resumed run continues with the same ones."""
        tracker = self.tracker.state_dict() if self.tracker is not None else None
        return {"tracker": tracker, "multipliers": dict(self.multipliers), "tracked": list(self.tracked)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore [`state_dict`][lightning_geo.callbacks.SparsityAwareLR.state_dict]; applied at fit start, once the
        model's parameters are known."""
        self.multipliers = {k: v for k, v in state_dict.get("multipliers", {}).items() if k not in self.not_acting_on}
        if state_dict.get("tracker") is None:
            return
        if self.tracker is not None:  # strategies that restore after setup (FSDP, ModelParallel)
            self.tracker.load_state_dict(state_dict["tracker"])
        else:
            self._loaded_state = {"tracker": state_dict["tracker"]}


def _step_will_be_skipped(trainer: pl.Trainer, optimizer: Optimizer) -> bool:
    """Whether the precision plugin's ``GradScaler`` found inf/NaN gradients and will skip this step."""
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not getattr(scaler, "is_enabled", lambda: False)():
        return False
    state = getattr(scaler, "_per_optimizer_states", {}).get(id(optimizer), {})
    found = state.get("found_inf_per_device", {})
    return bool(found) and any(float(v.item()) > 0 for v in found.values())


__all__ = ["DECAY_ROWS", "SparsityAwareLR", "density_multiplier"]
