"""Which rule updates which parameter of a model: the routing of [GeoMuon][lightning_geo.optim.GeoMuon].

A pure function of the module tree (no gradients, no processes), so it can be tested and printed on its own:

| parameter | rule | weight decay |
|---|---|---|
| 2-D weight of a linear-like layer, or any other 2-D matrix (1) | ``"muon"`` | ``weight_decay`` |
| token embedding (looked up by data) | ``embedding_rule`` (``"rows"``) | ``other_weight_decay`` |
| position embedding, absolute or relative (2) | ``"adamw"`` | ``other_weight_decay`` |
| output head, untied | ``"adamw"`` | ``weight_decay`` |
| output head tied to the token embedding | ``"adamw"`` | ``other_weight_decay`` |
| kernel of more than 2 dimensions (convolution) | ``"adamw"`` | ``weight_decay`` |
| norm weight, bias, any other parameter of fewer than 2 dimensions | ``"adamw"`` | ``other_weight_decay`` |

(1) ``nn.Linear``, Hugging Face ``Conv1D``; a fused QKV projection is one matrix. (2) GPT-2's ``wpe``, T5's
``relative_attention_bias``.

The output head is ``get_output_embeddings()`` of the model, or of the first module in it that has the method
(a Hugging Face model inside a LightningModule); else the last linear-like layer whose output size equals a
token embedding's number of rows (litgpt, nanoGPT-style models); else a linear-like layer named ``lm_head``,
``head`` or ``output``. A position embedding is an embedding (or a raw parameter) whose name says so (``wpe``,
``position...``, ``pos_emb...``, ``relative_attention_bias``: see
[`position_name_hint`][lightning_geo.utils.positions.position_name_hint]), unless it is the model's input
embedding (``get_input_embeddings()``, found the same way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from lightning_geo.utils.layers import is_linear_like
from lightning_geo.utils.positions import position_name_hint

RULES: tuple[str, ...] = ("muon", "adamw", "rows")
"""The update rules a parameter can take."""
EMBEDDING_RULES: tuple[str, ...] = ("rows", "adamw")
"""The rules a token embedding can take by default (``embedding_rule``)."""
HEAD_NAMES: tuple[str, ...] = ("lm_head", "head", "output")
"""Names of a module taken for the output head when nothing else identifies it."""


@dataclass(frozen=True)
class Route:
    """Where one parameter goes.

    Attributes:
        rule: ``"muon"``, ``"adamw"`` or ``"rows"``.
        kind: what the parameter was taken for (``"matrix"``, ``"token_embedding"``, ``"position_embedding"``,
            ``"head"``, ``"tied_head"``, ``"kernel"``, ``"vector"``), whatever its rule.
        decay: whether the parameter takes the matrices' ``weight_decay`` (True) or ``other_weight_decay``.
        overridden: whether ``rule`` comes from the user's ``routes``.
    """

    rule: str
    kind: str
    decay: bool
    overridden: bool = False


def _declared(model: nn.Module, method: str) -> nn.Module | None:
    """What the first module of ``model`` (itself, or the Hugging Face model a LightningModule wraps) that has
    ``method`` (``get_input_embeddings``/``get_output_embeddings``) returns, if a module with a weight."""
    for module in model.modules():
        get = getattr(module, method, None)
        if not callable(get):
            continue
        try:
            found = get()
        except (NotImplementedError, AttributeError):
            continue
        if isinstance(found, nn.Module) and isinstance(getattr(found, "weight", None), nn.Parameter):
            return found
    return None


def _output_head(model: nn.Module, vocab_sizes: set[int]) -> nn.Module | None:
    head = _declared(model, "get_output_embeddings")
    if head is not None:
        return head
    last = None
    for _, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not is_linear_like(module) or not isinstance(weight, nn.Parameter) or weight.dim() != 2:
            continue
        # nn.Linear's weight is (out, in); Hugging Face's Conv1D's is (in, out)
        out_features = weight.shape[1] if type(module).__name__ == "Conv1D" else weight.shape[0]
        if out_features in vocab_sizes:
            last = module
    if last is not None:
        return last
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in HEAD_NAMES and is_linear_like(module):
            return module
    return None


def _check_routes(routes: Mapping[str, str]) -> list[tuple[str, re.Pattern[str], str]]:
    if not isinstance(routes, Mapping):
        raise TypeError(f"GeoMuon: `routes` must be a dict {{pattern: rule}}, got {type(routes).__name__}")
    checked = []
    for pattern, rule in routes.items():
        if not isinstance(pattern, str):
            raise TypeError(f"GeoMuon: `routes` keys must be strings (a parameter name or a regex), got {pattern!r}")
        if rule not in RULES:
            raise ValueError(f"GeoMuon: `routes[{pattern!r}]` must be one of {RULES}, got {rule!r}")
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"GeoMuon: `routes` key {pattern!r} is not a valid regular expression: {err}") from None
        checked.append((pattern, compiled, rule))
    return checked


def route_parameters(
    model: nn.Module, *, routes: Mapping[str, str] | None = None, embedding_rule: str = "rows"
) -> dict[str, Route]:
    """The rule of every trainable parameter of ``model``, by its name in ``model.named_parameters()``.

    Args:
        model: the module whose parameters are routed. A parameter shared by several modules (a tied head and
            embedding) appears once, under its first name; parameters with ``requires_grad=False`` are left out.
        routes: overrides ``{pattern: rule}``; a pattern is a parameter name or a regular expression searched
            in the names (``re.search``). For each parameter the first matching pattern wins.
        embedding_rule: the rule of token embeddings, ``"rows"`` or ``"adamw"``.

    Returns:
        ``{name: Route}`` in the order of ``model.named_parameters()``.

    Raises:
        ValueError: for an unknown rule, an invalid regular expression, a pattern matching no trainable
            parameter, or ``"muon"`` asked for a parameter that is not 2-D.
    """
    overrides = _check_routes(routes or {})
    if embedding_rule not in EMBEDDING_RULES:
        raise ValueError(f"GeoMuon: `embedding_rule` must be one of {EMBEDDING_RULES}, got {embedding_rule!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    owner: dict[int, tuple[str, nn.Module]] = {}  # id(param) -> (module name, module) of its first owner
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            owner.setdefault(id(param), (module_name, module))
    embeddings = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))]
    input_embedding = _declared(model, "get_input_embeddings")
    token_tables = [m for n, m in embeddings if m is input_embedding or not position_name_hint(n)]
    # the vocabulary: the input embedding's rows where the model says which one it is, else every token table's
    vocab_tables = [input_embedding] if isinstance(input_embedding, nn.Module) else token_tables
    vocab_weights = [getattr(m, "weight", None) for m in vocab_tables]
    head = _output_head(model, {int(w.shape[0]) for w in vocab_weights if isinstance(w, Tensor)})
    head_weight = getattr(head, "weight", None) if head is not None else None
    token_weights = {id(m.weight) for m in token_tables}

    result: dict[str, Route] = {}
    used: set[str] = set()
    for name, param in named:
        match = next(((pattern, rule) for pattern, compiled, rule in overrides if compiled.search(name)), None)
        default = _default_route(name, param, owner.get(id(param)), head_weight, token_weights, embedding_rule)
        if match is None:
            result[name] = default
            continue
        pattern, rule = match
        used.add(pattern)
        if rule == "muon" and param.dim() != 2:
            raise ValueError(
                f"GeoMuon: `routes[{pattern!r}]` sends {name!r} of shape {tuple(param.shape)} to 'muon', which "
                "updates 2-D matrices only; route it to 'adamw' or 'rows'"
            )
        result[name] = Route(rule, default.kind, default.decay, overridden=True)
    unused = [pattern for pattern, _, _ in overrides if pattern not in used]
    if unused:
        raise ValueError(
            f"GeoMuon: `routes` pattern(s) {unused} match no trainable parameter of the model "
            f"(names look like {named[0][0] if named else '<none>'!r}; see `optimizer.routes`)"
        )
    return result


def _default_route(
    name: str,
    param: nn.Parameter,
    owner: tuple[str, nn.Module] | None,
    head_weight: object,
    token_weights: set[int],
    embedding_rule: str,
) -> Route:
    module = owner[1] if owner is not None else None
    leaf = name.rsplit(".", 1)[-1]
    if param is head_weight:
        if id(param) in token_weights:
            return Route("adamw", "tied_head", decay=False)
        return Route("adamw", "head", decay=True)
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)) and leaf == "weight":
        if id(param) in token_weights:
            return Route(embedding_rule, "token_embedding", decay=False)
        return Route("adamw", "position_embedding", decay=False)
    if param.dim() < 2:
        return Route("adamw", "vector", decay=False)
    if param.dim() > 2:
        return Route("adamw", "kernel", decay=True)
    if module is not None and not is_linear_like(module) and position_name_hint(name):
        return Route("adamw", "position_embedding", decay=False)  # a raw table, e.g. nn.Parameter pos_emb
    return Route("muon", "matrix", decay=True)
