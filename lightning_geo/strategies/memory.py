"""Peak memory of one rank training a transformer under a parallel plan, counted tensor by tensor.

``estimate_memory`` adds up what one rank holds at the peak of a Lightning training step of a decoder-only
transformer (``TransformerShape``) when GeoHybridStrategy applies a plan (``parallelize``: FSDP2 ``fully_shard``
per block and per top-level child, activation checkpointing per block, tensor parallel, CPU offload):

- parameters, gradients and optimizer state, divided by the shard and tensor-parallel sizes;
- activations: what autograd saves, per layer and token (``TransformerShape.layer_activations``);
- gathered: FSDP2's unsharded parameters; the root unit (embeddings, final norm, head) stays gathered from its
  forward to the end of backward; a block is gathered while it runs, and with a shard group of more than one
  rank a second block's all-gather output is in flight (kept after the copy-out in forward, the next block's
  prefetch in backward);
- communication: the unsharded gradients of the head and of the block in backward, and the previous block's
  reduce-scatter input (FSDP2 keeps it until the next reduce-scatter);
- temporaries: the logits and the loss's float32 ``micro_batch x seq_len x vocab`` tensors (often the peak of a
  small model), or the optimizer step's.

**The moments.** The peak is the largest of these, each a sum of what is alive together:

1. the forward of the last block: the previous step's gradients (Lightning zeroes them, ``set_to_none``, only
   after ``training_step``), every layer's activations, that block and the one in flight gathered;
2. the loss: the same with the block resharded, the final norm's activations and two logits-sized tensors
   (logits, log-softmax);
3. the loss's backward: no gradients, three logits-sized tensors (the log-softmax, its gradient and the logits');
4. the backward of a block: the activations of the blocks not yet done, the block's own (recomputed, with
   checkpointing) plus the gradients in flight (of its output and of the MLP's hidden layer, twice for SwiGLU),
   and the gradients of the blocks done (sharded under FSDP2): the first block back and the last two are the
   candidates;
5. the optimizer step: parameters, gradients and state, and two temporaries of the largest tensor (torch's
   single-tensor AdamW, its default on CPU) or one of every parameter (``foreach``, its default on CUDA).

Checked against the peak live tensor bytes of real CPU runs (gloo, float32, AdamW) of the demo's char LM and a
Hugging Face Llama under DDP, FSDP and HSDP, with and without checkpointing: within 0.5%, and within 5% for
FSDP2's CPU offload measured on a CPU (``benchmarks/memory_model.py``, ``benchmarks/results/memory_model.txt``).

**Pipeline.** With ``pipeline`` stages a rank holds ``layers / pipeline`` blocks; the first stage also the
embedding and, under 1F1B, the activations of ``pipeline`` micro-batches; the last stage the final norm, the head
and the loss. The estimate is the heavier of the two stages.

**Not measured here**: tensor parallel (the attention and MLP activations and every parameter divided by its
size, as torchtitan's plan splits them), pipelines, bf16 (``compute_bytes=2``, where autocast also keeps float32
norm outputs) and CPU offload on a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lightning_geo.strategies.transformer_shape import TransformerShape
from lightning_geo.utils.checks import check_bool, check_count, check_number

__all__ = ["OPTIMIZER_STATE_BYTES", "MemoryEstimate", "TransformerShape", "estimate_memory", "optimizer_state_bytes"]

FLOAT32_BYTES = 4
"""Bytes of a float32 element: the loss is computed in float32 whatever the compute precision."""

OPTIMIZER_STATE_BYTES: dict[str, float] = {"adamw": 8.0, "geo_adamw": 8.0, "muon": 4.0, "geo_muon": 4.0, "sgd": 4.0}
"""Bytes of float32 optimizer state per parameter:

- ``adamw``: the two moments; ``geo_adamw`` the same (its row rule adds one float32 count per row of a token
  embedding, ``4 / hidden`` bytes per parameter, not counted);
- ``muon``, ``geo_muon``: the momentum buffer of a hidden matrix; every other parameter (embeddings, head, norms,
  biases) takes AdamW's 8 (``optimizer_state_bytes`` averages the two);
- ``sgd``: the momentum buffer.
"""

_MATRIX_OPTIMIZERS = ("muon", "geo_muon")


def optimizer_state_bytes(optimizer: str, *, matrix_share: float = 1.0) -> float:
    """Bytes of optimizer state per parameter of a model whose hidden matrices are ``matrix_share`` of its
    parameters (it matters for Muon only, which keeps AdamW's state for the others).

    Args:
        optimizer: a key of ``OPTIMIZER_STATE_BYTES``.
        matrix_share: share of the parameters in the blocks' 2-D weight matrices, in [0, 1]; 1.

    Raises:
        ValueError: for an unknown ``optimizer`` or a ``matrix_share`` outside [0, 1].

    Example:
        >>> optimizer_state_bytes("muon", matrix_share=0.75)
        5.0
    """
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer={optimizer!r} is not one of {sorted(OPTIMIZER_STATE_BYTES)}")
    share = check_number("optimizer_state_bytes", "matrix_share", matrix_share, 0.0, 1.0)
    if optimizer in _MATRIX_OPTIMIZERS:
        return share * OPTIMIZER_STATE_BYTES[optimizer] + (1 - share) * OPTIMIZER_STATE_BYTES["adamw"]
    return OPTIMIZER_STATE_BYTES[optimizer]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank holds at the peak of a training step, by kind, and when the peak is.

    Args:
        parameters: this rank's parameters (its shards under FSDP2).
        gradients: its gradients alive at the peak.
        optimizer: its optimizer state.
        activations: tensors saved for backward, and a block's gradients in flight in its backward.
        gathered: FSDP2's unsharded parameters.
        communication: FSDP2's unsharded gradients and reduce-scatter input.
        temporaries: the logits and the loss's tensors, or the optimizer step's.
        cpu_bytes: host memory with CPU offload: sharded parameters, gradients and optimizer state (their peak,
            at the optimizer step); not in ``total``.
        moment: when the peak is: ``"forward of block 4"``, ``"loss"``, ``"loss backward"``, ``"backward of block
            2 of 4"`` (blocks counted from the input), ``"optimizer"``.
    """

    parameters: float
    gradients: float
    optimizer: float
    activations: float
    gathered: float
    communication: float
    temporaries: float
    cpu_bytes: float = 0.0
    moment: str = "loss"

    @property
    def total(self) -> float:
        """Device bytes at the peak: every field but ``cpu_bytes``."""
        return (self.parameters + self.gradients + self.optimizer + self.activations + self.gathered
                + self.communication + self.temporaries)


@dataclass(frozen=True)
class _Stage:
    """One pipeline stage: ``layers`` blocks, the embedding (first stage), the final norm and head (last), and
    the activations of ``microbatches`` micro-batches."""

    layers: int
    embedding: bool
    head: bool
    microbatches: int


def estimate_memory(
    shape: TransformerShape,
    *,
    replicate: int = 1,
    shard: int = 1,
    tensor: int = 1,
    pipeline: int = 1,
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    optimizer: str = "adamw",
    param_bytes: float = 4,
    grad_bytes: float = 4,
    compute_bytes: float = 4,
    microbatches_in_flight: int | None = None,
    foreach: bool = False,
) -> MemoryEstimate:
    """Peak bytes of one rank training ``shape`` on a ``(replicate, shard, tensor)`` mesh in ``pipeline`` stages.

    Args:
        shape: the model and one rank's micro-batch.
        replicate, shard, tensor: the mesh, as in ``Plan``; 1 each. ``replicate * shard > 1`` means FSDP2 is
            applied, also for plain replication (``fully_shard`` on a ``(replicate, 1)`` mesh).
        pipeline: pipeline stages; 1.
        activation_checkpointing: every block keeps only its input and recomputes the rest in backward; False.
        cpu_offload: FSDP2 keeps the shards of parameters, gradients and optimizer state in host memory
            (``cpu_bytes``), where the optimizer steps; False.
        optimizer: a key of ``OPTIMIZER_STATE_BYTES``; ``"adamw"``.
        param_bytes: bytes per parameter of the weights, sharded and gathered; 4.
        grad_bytes: bytes per parameter of the gradients; 4.
        compute_bytes: bytes per element of the activations; 4 (2 for bf16 autocast).
        microbatches_in_flight: micro-batches whose activations the first pipeline stage holds at once;
            ``None`` = ``pipeline`` (1F1B).
        foreach: the optimizer updates every parameter at once (torch's default on CUDA), with a float32 temporary
            of each; False: one parameter at a time (the default on CPU), two temporaries of the largest.

    Returns:
        A ``MemoryEstimate`` of bytes per rank.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range, naming it.

    Example:
        >>> shape = TransformerShape(layers=4, hidden=128, heads=4, ffn=512, vocab=2048, seq_len=128, micro_batch=8)
        >>> single, fsdp = estimate_memory(shape), estimate_memory(shape, shard=2)
        >>> fsdp.optimizer == single.optimizer / 2
        True
    """
    owner = "estimate_memory"
    if not isinstance(shape, TransformerShape):
        raise TypeError(f"{owner}: shape must be a TransformerShape, got {type(shape).__name__}")
    for name, size in (("replicate", replicate), ("shard", shard), ("tensor", tensor), ("pipeline", pipeline)):
        check_count(owner, name, size)
    for name, flag in (("activation_checkpointing", activation_checkpointing), ("cpu_offload", cpu_offload),
                       ("foreach", foreach)):
        check_bool(owner, name, flag)
    for name, nbytes in (("param_bytes", param_bytes), ("grad_bytes", grad_bytes), ("compute_bytes", compute_bytes)):
        check_number(owner, name, nbytes, 0.0, 8.0, low_open=True)
    if microbatches_in_flight is None:
        microbatches_in_flight = pipeline
    check_count(owner, "microbatches_in_flight", microbatches_in_flight)
    if pipeline > shape.layers:
        raise ValueError(f"{owner}: pipeline={pipeline} stages for {shape.layers} layers: at most one stage a layer")
    if cpu_offload and replicate * shard == 1:
        raise ValueError(f"{owner}: cpu_offload=True needs FSDP2, replicate * shard > 1; got replicate={replicate} "
                         f"and shard={shard}")
    state_bytes = optimizer_state_bytes(optimizer,
                                        matrix_share=shape.layers * shape.matrix_parameters / shape.parameters)
    if pipeline == 1:
        stages = [_Stage(shape.layers, embedding=True, head=True, microbatches=microbatches_in_flight)]
    else:
        stages = [_Stage(math.ceil(shape.layers / pipeline), embedding=True, head=False,
                         microbatches=microbatches_in_flight),
                  _Stage(shape.layers // pipeline, embedding=False, head=True, microbatches=1)]
    return max((_stage_peak(shape, stage, shard=shard, tensor=tensor, fsdp=replicate * shard > 1,
                            activation_checkpointing=activation_checkpointing, cpu_offload=cpu_offload,
                            state_bytes=state_bytes, param_bytes=param_bytes, grad_bytes=grad_bytes,
                            compute_bytes=compute_bytes, foreach=foreach) for stage in stages),
               key=lambda estimate: estimate.total)


def _stage_peak(shape: TransformerShape, stage: _Stage, *, shard: int, tensor: int, fsdp: bool,
                activation_checkpointing: bool, cpu_offload: bool, state_bytes: float, param_bytes: float,
                grad_bytes: float, compute_bytes: float, foreach: bool) -> MemoryEstimate:
    """The largest of the moments of one stage's training step (see the module's docstring)."""
    h, vocab, layers = shape.hidden, shape.vocab, stage.layers
    # parameters on this rank: one block's, and the root unit's (embedding, final norm, head), unsharded
    block = shape.block_parameters / tensor
    head = shape.norm_parameters + (0 if shape.tied_embeddings and stage.embedding else vocab * h)
    outer = (shape.embedding_parameters * stage.embedding + head * stage.head) / tensor
    params = layers * block + outer
    weights, grads, states = (params / shard * nbytes for nbytes in (param_bytes, grad_bytes, state_bytes))
    cpu = 0.0
    if cpu_offload:
        cpu, weights, grads, states = weights + grads + states, 0.0, 0.0, 0.0

    # activations: what a layer saves, what a block keeps until its backward, what its backward adds
    tokens = shape.micro_batch * shape.seq_len
    layer = tokens * shape.layer_activations(tensor) * compute_bytes
    kept_layer = tokens * h * compute_bytes if activation_checkpointing else layer
    kept = stage.microbatches * layers * kept_layer
    block_output = 2 * tokens * h * compute_bytes  # the last block's output and the residual sum, as it ends
    final_norm = tokens * shape.final_norm_activations * compute_bytes if stage.head else 0.0
    working = layer + tokens * ((2 if shape.gated_mlp else 1) * shape.ffn / tensor + h) * compute_bytes
    logits = tokens * vocab * FLOAT32_BYTES / tensor if stage.head else 0.0
    low_precision_logits = tokens * vocab * compute_bytes / tensor if stage.head and compute_bytes < 4 else 0.0

    # FSDP2's buffers: the root gathered throughout; a block gathered, another one's all-gather output in flight
    root = outer * param_bytes if fsdp else 0.0
    gathered_block = block * param_bytes if fsdp and layers else 0.0
    in_flight = gathered_block if shard > 1 else 0.0  # a shard group of one copies, no all-gather buffer
    head_grads = vocab * h / tensor * grad_bytes if stage.head else 0.0  # unsharded until the root's reduce
    block_grads = block * grad_bytes if layers else 0.0
    first_grads = shape.ffn * h / tensor * grad_bytes if layers else 0.0  # the MLP's down projection, the first

    largest = max(vocab * h * (stage.embedding or stage.head), shape.ffn * h, h * (shape.q_width + 2 * shape.kv_width))
    step_temporaries = 0.0 if cpu_offload else (
        params / shard * FLOAT32_BYTES if foreach else 2 * largest / tensor / shard * FLOAT32_BYTES)

    moments = [
        MemoryEstimate(weights, grads, states, kept + block_output, root + gathered_block + in_flight, 0.0, 0.0,
                       cpu, f"forward of block {layers}"),
        MemoryEstimate(weights, grads, states, kept + final_norm, root + in_flight, 0.0,
                       2 * logits + low_precision_logits, cpu, "loss"),
        MemoryEstimate(weights, 0.0, states, kept + final_norm, root + in_flight, 0.0, 3 * logits, cpu,
                       "loss backward"),
        MemoryEstimate(weights, grads, states, 0.0, 0.0, 0.0, step_temporaries, cpu, "optimizer"),
    ]
    # backward through the blocks, last to first: activations go, gradients come; the ends of the two straight
    # lines (the first block back; the last, or the one before it while the last is prefetched) hold the peak
    for done in sorted({0, max(layers - 2, 0), max(layers - 1, 0)} if layers else set()):
        activations = stage.microbatches * (layers - 1 - done) * kept_layer + working
        prefetch = in_flight if done < layers - 1 else 0.0
        if fsdp:  # the blocks done are reduced to shards; the previous one's reduce-scatter input is kept
            done_grads = 0.0 if cpu_offload else done * block_grads / shard
            gradients, gathered = done_grads, root + gathered_block + prefetch
            communication = head_grads + first_grads + (block_grads if done else 0.0)
        else:
            gradients, gathered, communication = head_grads + done * block_grads + first_grads, 0.0, 0.0
        moments.append(MemoryEstimate(weights, gradients, states, activations, gathered, communication, 0.0, cpu,
                                      f"backward of block {layers - done} of {layers}"))
    return max(moments, key=lambda estimate: estimate.total)
