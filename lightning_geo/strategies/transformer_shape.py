"""The shape of a decoder-only transformer and of one rank's micro-batch: what the memory model counts from.

``TransformerShape`` holds the sizes; ``TransformerShape.from_module`` reads them off a model's configuration
(Hugging Face GPT-2, Llama, Mistral, Qwen2, litgpt's ``GPT``, the demo's ``CharLanguageModel``). Its
``layer_activations`` is the per-token count of what autograd saves in one layer, measured tensor by tensor on
these models in float32 (``benchmarks/memory_model.py``):

| tensor | LayerNorm + GELU MLP (GPT-2, demo, litgpt) | RMSNorm + SwiGLU (Llama, Qwen2) |
|---|---|---|
| each of the two norms | input, output, mean and reciprocal deviation | input, normalised input, output, reciprocal |
| q, k, v (the attention's inputs) | ``q + 2 kv`` | ``q + 2 kv`` (after the rotation) |
| attention output, log-sum-exp | ``q`` + one per head | ``q`` + one per head |
| MLP | up projection, activation: ``2 ffn`` | gate, activation, up, product: ``4 ffn`` |

(``q`` = heads x head size, usually the hidden size ``h``; ``kv`` = key-value heads x head size.) It assumes
``scaled_dot_product_attention`` (flash kernels save no ``seq x seq`` scores), torch's own GELU or SiLU and no
dropout; Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models") count
``s*b*h*(34 + 5*a*s/h)`` bytes per GPT layer in fp16 with the attention scores and dropout masks this leaves out.
Hugging Face GPT-2's defaults (``gelu_new``, written in Python, and dropout 0.1) save more than the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lightning_geo.utils.checks import check_bool, check_count

HF_MODEL_TYPES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2")
"""Hugging Face ``config.model_type`` values ``TransformerShape.from_module`` reads."""


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a decoder-only transformer and of the micro-batch one rank trains on.

    Args:
        layers: transformer blocks.
        hidden: width of the residual stream.
        heads: attention (query) heads.
        ffn: width of the MLP's hidden layer (``4 * hidden`` for GPT-2).
        vocab: rows of the token embedding and of the output head.
        seq_len: tokens per sequence.
        micro_batch: sequences per rank and forward pass.
        kv_heads: key-value heads (grouped-query attention); ``None`` = ``heads``.
        head_dim: size of one head; ``None`` = ``hidden // heads``.
        gated_mlp: a SwiGLU MLP (gate, up and down matrices) instead of up and down; False.
        tied_embeddings: the output head is the token embedding's weight; False.
        learned_positions: rows of a learned position embedding (GPT-2's ``wpe``); 0 for rotary positions.
        rms_norm: RMSNorm (a weight; eager, it saves its normalised input too) instead of LayerNorm (weight and
            bias); False.
        bias: the attention's output projection and the MLP's matrices have biases; False.
        qkv_bias: the query, key and value projections have biases; ``None`` = ``bias``.

    Raises:
        TypeError, ValueError: for a size that is not a positive integer or a flag that is not a bool, naming it.

    Example:
        >>> gpt2 = TransformerShape(layers=12, hidden=768, heads=12, ffn=3072, vocab=50257, seq_len=1024,
        ...                         micro_batch=8, tied_embeddings=True, learned_positions=1024, bias=True)
        >>> gpt2.parameters
        124439808
    """

    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    seq_len: int
    micro_batch: int
    kv_heads: int | None = None
    head_dim: int | None = None
    gated_mlp: bool = False
    tied_embeddings: bool = False
    learned_positions: int = 0
    rms_norm: bool = False
    bias: bool = False
    qkv_bias: bool | None = None

    def __post_init__(self) -> None:
        owner = "TransformerShape"
        for name in ("layers", "hidden", "heads", "ffn", "vocab", "seq_len", "micro_batch"):
            check_count(owner, name, getattr(self, name))
        for name in ("gated_mlp", "tied_embeddings", "rms_norm", "bias"):
            check_bool(owner, name, getattr(self, name))
        check_count(owner, "learned_positions", self.learned_positions, low=0)
        if self.kv_heads is None:
            object.__setattr__(self, "kv_heads", self.heads)
        elif self.heads % check_count(owner, "kv_heads", self.kv_heads):
            raise ValueError(f"{owner}: kv_heads={self.kv_heads!r} must divide heads={self.heads!r}")
        if self.head_dim is None:
            if self.hidden % self.heads:
                raise ValueError(f"{owner}: hidden={self.hidden!r} must divide by heads={self.heads!r} (or give "
                                 "head_dim)")
            object.__setattr__(self, "head_dim", self.hidden // self.heads)
        else:
            check_count(owner, "head_dim", self.head_dim)
        if self.qkv_bias is None:
            object.__setattr__(self, "qkv_bias", self.bias)
        else:
            check_bool(owner, "qkv_bias", self.qkv_bias)

    @property
    def q_width(self) -> int:
        """Width of the queries and of the attention's output: ``heads * head_dim``."""
        assert self.head_dim is not None  # set in __post_init__
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the keys, and of the values: ``kv_heads * head_dim``."""
        assert self.kv_heads is not None and self.head_dim is not None  # set in __post_init__
        return self.kv_heads * self.head_dim

    @property
    def norm_parameters(self) -> int:
        """Parameters of one norm: a weight (RMSNorm), or a weight and a bias (LayerNorm)."""
        return self.hidden if self.rms_norm else 2 * self.hidden

    @property
    def matrix_parameters(self) -> int:
        """Parameters of one block's 2-D weight matrices (the ones Muon updates)."""
        h = self.hidden
        attention = h * (self.q_width + 2 * self.kv_width) + self.q_width * h
        return attention + (3 if self.gated_mlp else 2) * h * self.ffn

    @property
    def block_parameters(self) -> int:
        """Parameters of one block: its matrices, their biases and its two norms."""
        biases = (self.q_width + 2 * self.kv_width) * bool(self.qkv_bias)
        if self.bias:
            biases += self.hidden + (2 if self.gated_mlp else 1) * self.ffn + self.hidden
        return self.matrix_parameters + biases + 2 * self.norm_parameters

    @property
    def embedding_parameters(self) -> int:
        """Parameters of the token and position embeddings."""
        return (self.vocab + self.learned_positions) * self.hidden

    @property
    def head_parameters(self) -> int:
        """Parameters of the final norm and of the output head (none of its own when tied)."""
        return self.norm_parameters + (0 if self.tied_embeddings else self.vocab * self.hidden)

    @property
    def parameters(self) -> int:
        """Number of parameters (a tied weight counted once), as ``sum(p.numel() for p in model.parameters())``."""
        return self.layers * self.block_parameters + self.embedding_parameters + self.head_parameters

    def layer_activations(self, tensor: int = 1) -> float:
        """Elements one layer saves for backward, per token (see the module's table). Tensor parallel of size
        ``tensor`` splits the attention and the MLP (by heads and columns), not the norms."""
        norm = 3 * self.hidden + 1 if self.rms_norm else 2 * self.hidden + 2
        attention = 2 * self.q_width + 2 * self.kv_width + self.heads
        mlp = (4 if self.gated_mlp else 2) * self.ffn
        return 2 * norm + (attention + mlp) / tensor

    @property
    def final_norm_activations(self) -> int:
        """Elements the final norm saves per token: its input and output (and RMSNorm's normalised input)."""
        return (3 if self.rms_norm else 2) * self.hidden

    @classmethod
    def from_module(cls, module: nn.Module, seq_len: int, micro_batch: int) -> TransformerShape:
        """The shape of a model, read from its configuration.

        Reads the first module of ``module`` (itself included, outermost first) that carries a configuration it
        knows: a Hugging Face model (``config.model_type`` in ``HF_MODEL_TYPES``), litgpt's ``GPT``
        (``config.n_layer``, ``n_embd``, ``n_head``, ``n_query_groups``, ``intermediate_size``,
        ``padded_vocab_size``), the demo's ``CharLanguageModel`` (``config.n_layer``, ``n_embd``, ``n_head``,
        ``vocab_size``, ``seq_len``). A LightningModule holding the model as ``self.model`` works the same.

        Args:
            module: the model, or a module holding it.
            seq_len: tokens per sequence of the micro-batch.
            micro_batch: sequences per rank and forward pass.

        Raises:
            ValueError: when no module carries a configuration this reads (naming the configurations found), or
                one describes a layout ``TransformerShape`` cannot (a mixture of experts, extra norms).
        """
        found = []
        for child in module.modules():
            config = getattr(child, "config", None)
            if config is None:
                continue
            reader = _reader(config)
            if reader is not None:
                return cls(**reader(config), seq_len=seq_len, micro_batch=micro_batch)
            found.append(f"{type(child).__name__}.config ({type(config).__name__}, "
                         f"model_type={getattr(config, 'model_type', None)!r})")
        raise ValueError(
            f"TransformerShape.from_module: cannot read the shape of {type(module).__name__}: "
            + (f"found {'; '.join(found)}, " if found else "no module in it has a `config`, ")
            + f"but reads Hugging Face configs of model_type {HF_MODEL_TYPES}, litgpt's Config and the demo's "
            "GPTConfig; build TransformerShape(layers=..., hidden=..., ...) by hand"
        )


def _reader(config: Any) -> Any:
    """The function that reads ``config``, or ``None`` for a configuration this module does not know."""
    model_type = getattr(config, "model_type", None)
    if model_type == "gpt2":
        return _gpt2
    if model_type in HF_MODEL_TYPES:
        return _llama
    if type(config).__module__.split(".")[0] == "litgpt":
        return _litgpt
    if model_type is None and all(hasattr(config, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size",
                                                               "seq_len")):
        return _demo
    return None


def _gpt2(config: Any) -> dict[str, Any]:
    return {"layers": config.n_layer, "hidden": config.n_embd, "heads": config.n_head,
            "ffn": config.n_inner or 4 * config.n_embd, "vocab": config.vocab_size,
            "tied_embeddings": bool(config.tie_word_embeddings), "learned_positions": config.n_positions,
            "bias": True}


def _llama(config: Any) -> dict[str, Any]:
    qwen2 = config.model_type == "qwen2"  # biases on q, k and v only
    attention_bias = bool(getattr(config, "attention_bias", False))
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    if not qwen2 and attention_bias != mlp_bias:
        raise ValueError(
            f"TransformerShape.from_module: attention_bias={attention_bias} with mlp_bias={mlp_bias} is not a layout "
            "TransformerShape describes (its `bias` covers the attention's output projection and the MLP together)"
        )
    return {"layers": config.num_hidden_layers, "hidden": config.hidden_size, "heads": config.num_attention_heads,
            "kv_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "head_dim": getattr(config, "head_dim", None), "ffn": config.intermediate_size, "vocab": config.vocab_size,
            "tied_embeddings": bool(config.tie_word_embeddings), "gated_mlp": True, "rms_norm": True,
            "bias": mlp_bias and not qwen2, "qkv_bias": qwen2 or attention_bias}


def _litgpt(config: Any) -> dict[str, Any]:
    mlp = config.mlp_class_name
    if mlp not in ("GptNeoxMLP", "LLaMAMLP", "GemmaMLP"):
        raise ValueError(f"TransformerShape.from_module: litgpt's mlp_class_name={mlp!r} is not a dense MLP "
                         "('GptNeoxMLP', 'LLaMAMLP', 'GemmaMLP')")
    unusual = [name for name in ("norm_qk", "post_attention_norm", "post_mlp_norm", "shared_attention_norm",
                                 "lm_head_bias") if getattr(config, name, False)]
    if config.norm_class_name not in ("LayerNorm", "RMSNorm") or unusual:
        raise ValueError(f"TransformerShape.from_module: litgpt's norm_class_name={config.norm_class_name!r}"
                         f"{' with ' + ', '.join(unusual) if unusual else ''} is not described (one LayerNorm or "
                         "RMSNorm before the attention and one before the MLP, a head without bias)")
    return {"layers": config.n_layer, "hidden": config.n_embd, "heads": config.n_head,
            "kv_heads": config.n_query_groups, "head_dim": config.head_size, "ffn": config.intermediate_size,
            "vocab": config.padded_vocab_size, "gated_mlp": mlp != "GptNeoxMLP",
            "rms_norm": config.norm_class_name == "RMSNorm", "bias": bool(config.bias),
            "qkv_bias": bool(config.bias or getattr(config, "attn_bias", False))}


def _demo(config: Any) -> dict[str, Any]:
    return {"layers": config.n_layer, "hidden": config.n_embd, "heads": config.n_head, "ffn": 4 * config.n_embd,
            "vocab": config.vocab_size, "learned_positions": config.seq_len, "bias": True}
