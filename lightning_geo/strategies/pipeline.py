"""Pipeline parallelism for ``strategy="geo_hybrid"``: split a model into stages and run them with
``torch.distributed.pipelining``.

The contract a LightningModule meets to be pipelined is one method, ``pipeline_parts()``, returning a
[`PipelineParts`][lightning_geo.strategies.pipeline.PipelineParts]: the module that runs before the blocks
(``embed``), the blocks in order, the module that runs after them (``head``) and the loss. Every parameter of the
LightningModule must belong to exactly one of them, and the hidden state passed from block to block (and from
stage to stage) is one tensor with the batch as its first dimension. Example, for a nanoGPT-style model:

```python
class LM(pl.LightningModule):
    def pipeline_parts(self) -> PipelineParts:
        return PipelineParts(
            embed=TokenAndPosition(self.gpt.wte, self.gpt.wpe),  # a module of yours: (B, T) ids -> (B, T, C)
            blocks=self.gpt.blocks,
            head=nn.Sequential(self.gpt.ln_f, self.gpt.lm_head),  # (B, T, C) -> (B, T, V)
            loss=lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten()),
        )
```

Without the method, built-in adapters cover the project's demo LM (``CharLanguageModel``) and a LightningModule
holding a Hugging Face ``LlamaForCausalLM`` or ``GPT2LMHeadModel`` (untied head; RoPE and the causal mask are
recomputed in every block, as the model's own forward computes them once).

The split (``split_blocks``): stage ``k`` of ``V`` holds a contiguous share of the blocks, balanced by count of
blocks (the first stages take one more when they do not divide), stage 0 also ``embed``, the last stage also
``head`` and the loss. On each rank, every module of the LightningModule whose parameters all live on other stages
is replaced by an [`OnAnotherStage`][lightning_geo.strategies.pipeline.OnAnotherStage] placeholder, so the
optimizer, the gradient clipping and the distributed checkpoint see only this rank's stage, under the parameter
names of the whole model.

Under pipeline parallelism the strategy runs each step itself: the LightningModule's ``training_step``,
``validation_step``, ``test_step``, ``forward`` and ``backward`` are not called; ``PipelineParts.on_loss`` gets
the loss of every batch instead (by default it logs ``train/loss``, ``val/loss``, ``test/loss``). What else differs:

- Each batch (of a data-parallel replica) is cut into ``n_microbatches`` equal micro-batches, which must divide
  it. The schedule runs forward and backward of all of them inside ``training_step``; Lightning's optimizer step,
  ``zero_grad``, gradient accumulation, gradient clipping (by the whole model's norm, over every stage) and LR
  schedulers work as usual, and ``on_before_backward`` / ``on_after_backward`` run after that backward.
- A schedule fixes its micro-batch shapes at its first step (``torch.distributed.pipelining`` infers them with
  one extra forward and backward): a new batch shape (a shorter last batch, a sequence-length curriculum) gets a
  schedule of its own, once.
- Checkpoints are distributed (each rank saves its stage, the optimizer state one key per parameter) and resume
  a run with pipeline stages; ``predict`` is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lightning_geo.strategies.parallelize import apply_tensor_parallel, offload_policy

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor.parallel import ParallelStyle

    from lightning_geo.strategies.planner import Plan

SCHEDULES = ("1f1b", "gpipe", "interleaved_1f1b")
"""Pipeline schedules by name: ``torch.distributed.pipelining``'s ``Schedule1F1B``, ``ScheduleGPipe`` and
``ScheduleInterleaved1F1B`` (two stages per rank, looped: rank ``r`` holds stages ``r`` and ``r + P``)."""

STAGES_PER_RANK = {"1f1b": 1, "gpipe": 1, "interleaved_1f1b": 2}


def _first_two(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch[0], batch[1])`` of a tuple or list batch."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"PipelineParts.split_batch: the default expects a batch (input, target, ...), got {type(batch).__name__}; "
            "give PipelineParts(split_batch=...) to say which tensors are the model input and the loss target"
        )
    return batch[0], batch[1]


def _log_loss(module: pl.LightningModule) -> Callable[[str, torch.Tensor, Any], None]:
    """The default ``on_loss``: ``<stage>/loss`` per step in training, averaged over the epoch otherwise."""

    def log(stage: str, loss: torch.Tensor, batch: Any) -> None:
        if stage == "train":
            module.log("train/loss", loss, prog_bar=True)
        else:
            module.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True)

    return log


@dataclass
class PipelineParts:
    """How a model decomposes into pipeline stages (what ``LightningModule.pipeline_parts()`` returns).

    Args:
        embed: runs first, on stage 0: the model input ``(B, ...)`` to the hidden state ``(B, ...)``.
        blocks: the repeated blocks in order, each hidden state to hidden state (one tensor in, one out).
        head: runs last, on the last stage: hidden state to the output the loss reads (e.g. logits ``(B, T, V)``).
        loss: ``(output, target) -> scalar``, the mean loss of a micro-batch (the mean over micro-batches is the
            batch's loss, exactly so when micro-batches hold equal numbers of loss terms).
        split_batch: a batch to ``(model input, loss target)``, both tensors with the batch first; default
            ``(batch[0], batch[1])``.
        on_loss: called on every rank with ``("train" | "val" | "test", loss, batch)``, the loss being the mean
            over the batch's micro-batches (the same on every stage of one data-parallel replica); default: log
            ``train/loss`` each step and ``val/loss``, ``test/loss`` per epoch.
    """

    embed: nn.Module
    blocks: Sequence[nn.Module]
    head: nn.Module
    loss: Callable[[Any, torch.Tensor], torch.Tensor]
    split_batch: Callable[[Any], tuple[torch.Tensor, torch.Tensor]] = _first_two
    on_loss: Callable[[str, torch.Tensor, Any], None] | None = None


class OnAnotherStage(nn.Module):
    """Stands in, on this rank, for a module whose parameters live on another pipeline stage.

    Args:
        name: qualified name of the module it replaces.
        stages: the stages that hold it.
    """

    def __init__(self, name: str, stages: Sequence[int]) -> None:
        super().__init__()
        self.name = name
        self.stages = tuple(stages)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{self.name} runs on pipeline stage {', '.join(map(str, self.stages))}, not on this rank: under "
            "pipeline parallelism GeoHybridStrategy runs the model through its stages, so the LightningModule's "
            "forward and step methods cannot run it whole"
        )

    def extra_repr(self) -> str:
        return f"{self.name!r}, stages={self.stages}"


class StageModule(nn.Module):
    """One pipeline stage: ``embed`` (stage 0), its blocks, ``head`` (last stage), applied in order.

    Args:
        embed: the input module, or None on a stage other than the first.
        blocks: ``{block index: block}`` of the blocks this stage holds.
        head: the output module, or None on a stage other than the last.
    """

    def __init__(self, embed: nn.Module | None, blocks: dict[int, nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleDict({str(i): b for i, b in blocks.items()})
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed is not None:
            x = self.embed(x)
        for block in self.blocks.values():
            x = block(x)
        return self.head(x) if self.head is not None else x


def split_blocks(num_blocks: int, num_stages: int) -> list[range]:
    """The block indices of each stage: contiguous, balanced by count, the first stages one more when needed.

    Raises:
        ValueError: when there are fewer blocks than stages.
    """
    if num_blocks < num_stages:
        raise ValueError(f"pipeline: {num_stages} stages need at least {num_stages} blocks, the model has {num_blocks}")
    base, extra = divmod(num_blocks, num_stages)
    bounds = [0]
    for k in range(num_stages):
        bounds.append(bounds[-1] + base + (k < extra))
    return [range(bounds[k], bounds[k + 1]) for k in range(num_stages)]


def parameter_stages(module: nn.Module, parts: PipelineParts, num_stages: int) -> dict[str, int]:
    """The stage of every parameter of ``module``, by qualified name.

    Raises:
        ValueError: when a parameter is in no part, or in parts on two stages (tied weights).
    """
    ranges = split_blocks(len(parts.blocks), num_stages)
    owner: dict[int, tuple[int, str]] = {}
    pieces = [(0, "embed", parts.embed), (num_stages - 1, "head", parts.head)]
    pieces += [(k, f"blocks[{i}]", parts.blocks[i]) for k, r in enumerate(ranges) for i in r]
    for stage, label, piece in pieces:
        for param in piece.parameters():
            seen = owner.setdefault(id(param), (stage, label))
            if seen[0] != stage:
                raise ValueError(
                    f"pipeline: a parameter of shape {tuple(param.shape)} is used by {seen[1]} (stage {seen[0]}) and "
                    f"by {label} (stage {stage}); tied weights cannot be split across stages (untie them, e.g. "
                    "tie_word_embeddings=False for a Hugging Face model)"
                )
    stages = {}
    for name, param in module.named_parameters():
        if id(param) not in owner:
            raise ValueError(
                f"pipeline: parameter {name!r} is in none of pipeline_parts()' embed, blocks or head; every parameter "
                "must run on exactly one stage"
            )
        stages[name] = owner[id(param)][0]
    return stages


def keep_stages(module: nn.Module, stages: dict[str, int], keep: set[int]) -> list[str]:
    """Replace, in place, every submodule of ``module`` whose parameters all live on stages outside ``keep`` by an
    ``OnAnotherStage``; a parameter held directly by a module that keeps others is set to None.

    Returns the qualified names replaced.
    """
    replaced: list[str] = []

    def visit(prefix: str, parent: nn.Module) -> None:
        for name, _ in list(parent.named_parameters(recurse=False)):
            if stages[prefix + name] not in keep:
                parent.register_parameter(name, None)
        for name, child in list(parent.named_children()):
            held = {stages[prefix + name + "." + n] for n, _ in child.named_parameters()}
            if held and not held & keep:
                setattr(parent, name, OnAnotherStage(prefix + name, sorted(held)))
                replaced.append(prefix + name)
            elif held:
                visit(prefix + name + ".", child)

    visit("", module)
    return replaced


def build_stage_modules(module: nn.Module, parts: PipelineParts, stage_indices: Sequence[int],
                        num_stages: int) -> list[StageModule]:
    """This rank's stages of ``module`` (one per index in ``stage_indices``); the rest of ``module`` is replaced by
    placeholders (``keep_stages``)."""
    stages = parameter_stages(module, parts, num_stages)
    ranges = split_blocks(len(parts.blocks), num_stages)
    built = [
        StageModule(parts.embed if k == 0 else None, {i: parts.blocks[i] for i in ranges[k]},
                    parts.head if k == num_stages - 1 else None)
        for k in stage_indices
    ]
    keep_stages(module, stages, set(stage_indices))
    return built


# ----------------------------------------------------------------------------------------------- adapters


def pipeline_parts(module: pl.LightningModule) -> PipelineParts:
    """``module.pipeline_parts()``, else the built-in adapter that recognises the module.

    Raises:
        ValueError: when the module has no ``pipeline_parts()`` and no adapter recognises it.
    """
    own = getattr(module, "pipeline_parts", None)
    if callable(own):
        parts = own()
        if not isinstance(parts, PipelineParts):
            raise TypeError(f"{type(module).__name__}.pipeline_parts() must return PipelineParts, got {type(parts)}")
    elif _is_class(module, "lightning_geo.demo.model", "CharLanguageModel"):
        parts = _char_lm_parts(module)
    else:
        hf = next((m for m in module.modules() if _is_class(m, None, "LlamaForCausalLM", "GPT2LMHeadModel")), None)
        if hf is None:
            raise ValueError(
                f"pipeline: {type(module).__name__} has no pipeline_parts() method and is not a model the built-in "
                "adapters know (lightning_geo's CharLanguageModel, Hugging Face LlamaForCausalLM or GPT2LMHeadModel); "
                "define pipeline_parts() returning PipelineParts(embed=..., blocks=..., head=..., loss=...)"
            )
        parts = _hugging_face_parts(hf)
    if parts.on_loss is None:
        parts.on_loss = _log_loss(module)
    return parts


def _is_class(obj: object, module_name: str | None, *names: str) -> bool:
    return any(c.__name__ in names and (module_name is None or c.__module__ == module_name)
               for c in type(obj).__mro__)


class _TokenAndPosition(nn.Module):
    """``wte(ids) + wpe(0..T-1)``, then ``dropout``: ids ``(B, T)`` to the hidden state ``(B, T, C)``."""

    def __init__(self, wte: nn.Module, wpe: nn.Module, dropout: nn.Module | None = None) -> None:
        super().__init__()
        self.wte, self.wpe, self.drop = wte, wpe, dropout or nn.Identity()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.drop(self.wte(ids) + self.wpe(positions))


def _char_lm_parts(module: Any) -> PipelineParts:  # a CharLanguageModel (not imported: demo is no dependency)
    gpt = module.model
    ln2 = math.log(2.0)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # as CharLanguageModel._loss
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten())

    def on_loss(stage: str, value: torch.Tensor, batch: Any) -> None:  # as its training_step / validation_step
        if stage == "train":
            module.log("train/loss", value, prog_bar=True)
            module.log("train/bpc", value / ln2)
        else:  # its on_validation_epoch_end / on_test_epoch_end log the metric
            module.val_loss.update(value, weight=batch[0].numel())

    return PipelineParts(embed=_TokenAndPosition(gpt.wte, gpt.wpe), blocks=list(gpt.blocks),
                         head=nn.Sequential(gpt.ln_f, gpt.lm_head), loss=loss, on_loss=on_loss)


class _HuggingFaceBlock(nn.Module):
    """A Hugging Face decoder layer run on the hidden state alone: positions ``0..T-1``, the causal mask of the
    model's attention implementation and (Llama) the rotary embedding, computed as the model's forward does."""

    def __init__(self, layer: nn.Module, config: Any, rotary: nn.Module | None) -> None:
        super().__init__()
        self.layer, self.config, self.rotary = layer, config, rotary

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_causal_mask

        cache_position = torch.arange(hidden.shape[1], device=hidden.device)
        position_ids = cache_position.unsqueeze(0)
        mask = create_causal_mask(config=self.config, inputs_embeds=hidden, attention_mask=None,
                                  cache_position=cache_position, past_key_values=None, position_ids=position_ids)
        extra = {} if self.rotary is None else {"position_embeddings": self.rotary(hidden, position_ids=position_ids)}
        out = self.layer(hidden, attention_mask=mask, position_ids=position_ids, cache_position=cache_position,
                         **extra)
        return out[0] if isinstance(out, tuple) else out  # transformers < 5 returns a tuple


def _hugging_face_parts(hf: Any) -> PipelineParts:
    """Llama (``model.embed_tokens / layers / norm / rotary_emb``, ``lm_head``) or GPT-2 (``transformer.wte / wpe /
    h / ln_f``, ``lm_head``); the loss is the model's: next-token cross-entropy ignoring label -100. The batch is a
    dict with ``input_ids`` and ``labels`` (default: the input ids); ``attention_mask`` is not used, so padding must
    be on the right (causal attention then never lets a real token see it)."""
    try:
        import transformers.masking_utils  # noqa: F401
    except ImportError as err:
        raise ValueError("pipeline: the Hugging Face adapter needs transformers >= 4.53 (masking_utils)") from err
    config = hf.config
    if _is_class(hf, None, "LlamaForCausalLM"):
        inner = hf.model
        embed: nn.Module = inner.embed_tokens
        blocks = [_HuggingFaceBlock(layer, config, inner.rotary_emb) for layer in inner.layers]
        head = nn.Sequential(inner.norm, hf.lm_head)
    else:
        inner = hf.transformer
        embed = _TokenAndPosition(inner.wte, inner.wpe, inner.drop)
        blocks = [_HuggingFaceBlock(layer, config, None) for layer in inner.h]
        head = nn.Sequential(inner.ln_f, hf.lm_head)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

    def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, dict) or "input_ids" not in batch:
            raise TypeError("pipeline: a Hugging Face model's batch must be a dict with 'input_ids' (and 'labels')")
        return batch["input_ids"], batch["labels"] if "labels" in batch else batch["input_ids"]

    return PipelineParts(embed=embed, blocks=blocks, head=head, loss=loss, split_batch=split_batch)


# ----------------------------------------------------------------------------------------------- running


class PipelineRunner:
    """This rank's stages and the schedule that runs them, one schedule per input shape and mode.

    Args:
        stages: this rank's ``StageModule``s, in stage order.
        stage_indices: their stage indices.
        num_stages: stages in all.
        parts: the model's ``PipelineParts`` (for the loss, the batch split and ``on_loss``).
        pp_mesh: the 1-D ``pipeline`` mesh of this rank.
        device: this rank's device.
        schedule: one of ``SCHEDULES``.
        n_microbatches: micro-batches per batch; must divide every batch (per data-parallel replica).
    """

    def __init__(self, stages: list[StageModule], stage_indices: list[int], num_stages: int, parts: PipelineParts,
                 pp_mesh: DeviceMesh, device: torch.device, *, schedule: str, n_microbatches: int) -> None:
        self.stages, self.stage_indices, self.num_stages = stages, stage_indices, num_stages
        self.parts, self.device = parts, device
        self.schedule_name, self.n_microbatches = schedule, n_microbatches
        self.group = pp_mesh.get_group()
        self.size = pp_mesh.size()
        self.is_first = 0 in stage_indices
        self.is_last = num_stages - 1 in stage_indices
        self._last_rank = torch.distributed.get_global_rank(self.group, self.size - 1)  # holds the last stage
        self._schedules: dict[tuple, Any] = {}
        self._loss_scale = 1.0
        self._aside: list[tuple[nn.Parameter, torch.Tensor | None]] = []

    def _schedule(self, key: tuple) -> Any:
        # a schedule's stages fix their micro-batch shapes at the first step: one per shape, and per mode
        if key not in self._schedules:
            from torch.distributed.pipelining import (
                PipelineStage,
                Schedule1F1B,
                ScheduleGPipe,
                ScheduleInterleaved1F1B,
            )

            stages = [PipelineStage(m, k, self.num_stages, self.device, group=self.group)
                      for m, k in zip(self.stages, self.stage_indices, strict=True)]
            kind = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe, "interleaved_1f1b": ScheduleInterleaved1F1B}
            first = stages if self.schedule_name == "interleaved_1f1b" else stages[0]
            self._schedules[key] = kind[self.schedule_name](first, self.n_microbatches, loss_fn=self._loss,
                                                           scale_grads=False)
        return self._schedules[key]

    def _loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        # a micro-batch's share of the optimizer step's mean loss (PipelineStage's own scaling would also divide
        # gradients kept from earlier batches of a gradient accumulation)
        return self.parts.loss(output, target) * self._loss_scale

    def _run(self, batch: Any, training: bool, accumulate: int) -> torch.Tensor:
        inputs, target = self.parts.split_batch(batch)
        size = inputs.shape[0]
        if size % self.n_microbatches:
            raise ValueError(
                f"GeoHybridStrategy: n_microbatches={self.n_microbatches} must divide the batch size of each "
                f"data-parallel replica, got a batch of {size} (use a batch size that divides, drop_last=True, or "
                "set n_microbatches)"
            )
        schedule = self._schedule((tuple(inputs.shape), inputs.dtype, tuple(target.shape), training))
        self._loss_scale = 1.0 / (self.n_microbatches * accumulate)
        args = (inputs.to(self.device),) if self.is_first else ()
        target = target.to(self.device)
        losses: list[torch.Tensor] = []
        if training:
            schedule.step(*args, target=target, losses=losses, return_outputs=False)
        else:
            schedule.eval(*args, target=target, losses=losses)
        if self.is_last:
            loss = torch.stack([v.detach().float() for v in losses]).sum() / (self._loss_scale * self.n_microbatches)
        else:
            loss = torch.zeros((), device=self.device)
        if self.size > 1:
            torch.distributed.broadcast(loss, src=self._last_rank, group=self.group)
        return loss

    def train_step(self, batch: Any, *, accumulate: int = 1) -> torch.Tensor:
        """Forward and backward of every micro-batch of ``batch``; the batch's mean loss, on every rank.

        Gradients are scaled for a mean over the ``accumulate`` batches of one optimizer step, and accumulate
        into the parameters' ``grad`` as a backward would.
        """
        return self._run(batch, True, accumulate)

    def parameters(self) -> list[nn.Parameter]:
        """The parameters of this rank's stages."""
        return [p for stage in self.stages for p in stage.parameters()]

    def zero_gradients(self) -> None:
        """Set the gradients of this rank's stages to None."""
        for p in self.parameters():
            p.grad = None

    def put_aside_gradients(self) -> None:
        """Take the gradients off the parameters (``grad`` becomes None) until ``put_back_gradients``."""
        self._aside = [(p, p.grad) for p in self.parameters()]
        for p, _ in self._aside:
            p.grad = None

    def put_back_gradients(self) -> None:
        """Give the parameters the gradients ``put_aside_gradients`` took."""
        for p, grad in self._aside:
            p.grad = grad
        self._aside = []

    def eval_step(self, batch: Any) -> torch.Tensor:
        """Forward only; the batch's mean loss, on every rank."""
        return self._run(batch, False, 1)


def build_pipeline(module: pl.LightningModule, mesh: DeviceMesh, plan: Plan, device: torch.device, *,
                   schedule: str = "1f1b", n_microbatches: int | None = None,
                   tensor_parallel_plan: dict[str, ParallelStyle] | None = None) -> tuple[PipelineRunner, dict]:
    """Split ``module`` for ``plan.pipeline`` stages and parallelize this rank's stages.

    In order: split (the rest of ``module`` becomes placeholders), tensor parallel on the stage's modules,
    activation checkpointing of its blocks, then FSDP2 over the data-parallel dims (each block, ``embed``,
    ``head``, and the stage as the root that ``torch.distributed.pipelining`` reduces gradients through).

    Args:
        module: the LightningModule (see ``pipeline_parts``); changed in place.
        mesh: the 4-D mesh ``(pipeline, data_parallel_replicate, data_parallel_shard, tensor_parallel)``.
        plan: the plan (``pipeline``, ``replicate``, ``shard``, ``tensor``, activation checkpointing, CPU offload).
        device: this rank's device (the stages' activations and losses live there).
        schedule: one of ``SCHEDULES``; ``"1f1b"``.
        n_microbatches: micro-batches per batch; default ``2 * plan.pipeline``.
        tensor_parallel_plan: as for ``parallelize``, keyed by qualified names in ``module``; entries for modules
            on other stages are skipped.

    Returns:
        ``(runner, what was applied)``.
    """
    from torch.distributed.fsdp import fully_shard

    if any(isinstance(m, OnAnotherStage) for m in module.modules()):
        raise ValueError(
            f"GeoHybridStrategy: this {type(module).__name__} was split into pipeline stages by an earlier run; "
            "give the Trainer a new module (load the checkpoint into it to continue)"
        )
    parts = pipeline_parts(module)
    size = plan.pipeline
    per_rank = STAGES_PER_RANK[schedule]
    num_stages = size * per_rank
    rank = mesh["pipeline"].get_local_rank()
    indices = [rank + size * v for v in range(per_rank)]
    if len(parts.blocks) < num_stages:
        raise ValueError(
            f"GeoHybridStrategy: pipeline={size} with schedule {schedule!r} needs {num_stages} stages but "
            f"{type(module).__name__} has {len(parts.blocks)} blocks; use fewer stages"
        )
    stages = build_stage_modules(module, parts, indices, num_stages)
    done: dict[str, object] = {"pipeline_stages": indices, "schedule": schedule,
                               "blocks": [list(map(int, s.blocks.keys())) for s in stages]}
    if plan.tensor > 1:
        names = dict(module.named_modules())
        given = None if tensor_parallel_plan is None else {
            k: v for k, v in tensor_parallel_plan.items() if not isinstance(names.get(k), OnAnotherStage)}
        done["tensor_parallel_modules"] = apply_tensor_parallel(module, mesh["tensor_parallel"], given)
    if plan.activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        for stage in stages:  # the stage runs the wrapper; the LightningModule keeps the block (its names)
            for key, block in list(stage.blocks.items()):
                stage.blocks[key] = checkpoint_wrapper(block)
    done["activation_checkpointing"] = plan.activation_checkpointing
    if plan.replicate * plan.shard > 1:
        dp_mesh = mesh["data_parallel_replicate", "data_parallel_shard"]
        policy = offload_policy(plan.cpu_offload)
        for stage in stages:
            # kept gathered between micro-batches: resharding after each forward would all-gather again per
            # micro-batch (torchtitan does the same under pipeline parallelism)
            for unit in [*stage.blocks.values(), stage.embed, stage.head]:
                if unit is not None and any(True for _ in unit.parameters()):
                    fully_shard(unit, mesh=dp_mesh, offload_policy=policy, reshard_after_forward=False)
            fully_shard(stage, mesh=dp_mesh, offload_policy=policy, reshard_after_forward=False)
        done["units"] = ["embed", "blocks", "head"]
    microbatches = n_microbatches or 2 * size
    runner = PipelineRunner(stages, indices, num_stages, parts, mesh["pipeline"], device, schedule=schedule,
                            n_microbatches=microbatches)
    done["n_microbatches"] = microbatches
    return runner, done


def clip_grad_norm_(parameters: Sequence[torch.Tensor], max_norm: float, group: Any) -> torch.Tensor:
    """Clip the gradients of ``parameters`` (this rank's stages) so that the 2-norm of the whole model's gradients,
    over every stage of the pipeline ``group``, is at most ``max_norm``; returns that norm.

    Per stage, the norm would leave each stage its own clipping coefficient: not what a one-process run does.
    """
    from torch.distributed.tensor import DTensor

    parameters = list(parameters)
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if isinstance(total, DTensor):  # sharded gradients: the norm over the data-parallel and tensor dims
        total = total.full_tensor()
    squared = total.double() ** 2
    torch.distributed.all_reduce(squared, group=group)
    total = squared.sqrt().to(total.dtype)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


# ----------------------------------------------------------------------------------------------- checkpoints
# Each rank saves its stage into the distributed checkpoint. The model's keys are the parameter names, disjoint
# across stages; the optimizer state is flattened to one key per parameter and field, as the stages' param_groups
# differ while a distributed checkpoint keeps a single copy of a key several ranks save.


def _flat_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(cpu_offload=True, flatten_optimizer_state_dict=True)


def stage_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state of this rank's stage of ``module``, flattened (``state.<name>.<field>``,
    ``param_groups.<name>.<field>``), for a distributed checkpoint."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_flat_options())


def load_stage_checkpoint(path: Path, module: nn.Module, optimizers: Sequence[torch.optim.Optimizer], *,
                          strict: bool, weights_only: bool | None) -> dict[str, Any]:
    """Load this rank's stage of ``module`` and its ``optimizers`` from the distributed checkpoint folder ``path``
    (as saved with ``stage_optimizer_state``); returns the rest of the checkpoint (Lightning's ``meta.pt``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from lightning_geo.strategies.checkpoint import LIGHTNING_METADATA

    state = {"state_dict": get_model_state_dict(module)}
    dcp.load(state, checkpoint_id=path)
    module.load_state_dict(state["state_dict"], strict=strict)
    for index, optimizer in enumerate(optimizers):
        key = f"optimizer_{index}"
        optim_state = {key: get_optimizer_state_dict(module, optimizer, options=_flat_options())}
        dcp.load(optim_state, checkpoint_id=path)
        set_optimizer_state_dict(module, optimizer, optim_state_dict=optim_state[key], options=_flat_options())
    return torch.load(path / LIGHTNING_METADATA, weights_only=weights_only)
