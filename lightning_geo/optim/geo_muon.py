"""``GeoMuon``: one optimizer for a whole model: Muon for hidden matrices, the row rule for token embeddings,
AdamW for the rest.

Muon (Jordan et al. 2024; "Muon is Scalable for LLM Training", Liu et al. 2025) orthogonalises the momentum of
a 2-D weight matrix with a few Newton-Schulz iterations before it steps. It is meant for the hidden matrices
only: embeddings, the output head, norms and biases take an element-wise rule. ``torch.optim.Muon`` refuses any
parameter that is not 2-D, so a user would need two optimizers and a routing of their own; ``GeoMuon`` is one
``torch.optim.Optimizer`` built from the model, with one param group per rule (key ``"rule"``), so that
Lightning's LR schedulers, gradient clipping, precision plugins and checkpoints see an ordinary optimizer.

The arithmetic is torch's own: ``torch.optim.Muon``'s functional update, ``torch.optim.AdamW``'s functional
update and [GeoAdamW][lightning_geo.optim.GeoAdamW]'s row rule.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.optim import Optimizer

from lightning_geo.optim.geo_adamw import GeoAdamW, load_keeping_row_counts_float32
from lightning_geo.optim.muon_routing import RULES, Route, route_parameters
from lightning_geo.utils.checks import check_number
from lightning_geo.utils.cpu_precision import cpu_has_native_bf16
from lightning_geo.utils.dashboard import DashboardSection
from lightning_geo.utils.distributed import local_part
from lightning_geo.utils.geo_logging import log_geo_scalars, log_geo_text

ADJUST_LR_FNS: tuple[str, ...] = ("match_rms_adamw", "original")
"""How a Muon matrix's step is scaled from ``lr`` (see [GeoMuon][lightning_geo.optim.GeoMuon])."""
MIN_TORCH = "2.9"
"""The first torch release with ``torch.optim.Muon``."""
NS_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32")
"""The precisions Newton-Schulz can run in (``ns_dtype``)."""

# The row rule's own settings (row_wise, row_scale_power, ...) are GeoAdamW's defaults, read from its signature so
# that a "rows" group holds every key GeoAdamW's step reads; the shared ones come from GeoMuon's arguments.
_SHARED_KEYS = ("params", "lr", "betas", "eps", "weight_decay", "foreach", "fused")
_ROWS_DEFAULTS = {
    name: p.default for name, p in inspect.signature(GeoAdamW).parameters.items()
    if name not in _SHARED_KEYS and p.default is not inspect.Parameter.empty
}


def _torch_muon() -> ModuleType:
    """torch's Muon module (``_zeropower_via_newtonschulz``, ``_adjust_lr``, ``muon``)."""
    try:
        from torch.optim import _muon
    except ImportError:
        raise ImportError(
            f"GeoMuon needs torch >= {MIN_TORCH} (torch.optim.Muon); this is torch {torch.__version__}"
        ) from None
    return _muon


def _is_sharded(tensor: Tensor) -> bool:
    return hasattr(tensor, "placements")


def newton_schulz_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    """The dtype Newton-Schulz runs in on ``device``: ``ns_dtype``'s, and for ``"auto"`` bf16 on an accelerator or
    a CPU with bf16 instructions, else fp32 (a CPU without them emulates bf16 products, ~10x slower than fp32)."""
    if ns_dtype == "bfloat16":
        return torch.bfloat16
    if ns_dtype == "float32":
        return torch.float32
    if device.type != "cpu" or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def orthogonalize(
    update: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float, dtype: torch.dtype
) -> Tensor:
    """Muon's quintic Newton-Schulz iteration on a 2-D ``update``, in ``dtype``: torch's own in bf16
    (``torch.optim.Muon``'s numbers), the same iteration in ``dtype`` otherwise."""
    if dtype == torch.bfloat16:
        return _torch_muon()._zeropower_via_newtonschulz(update, coefficients, steps, eps)
    a, b, c = coefficients
    tall = update.size(0) > update.size(1)
    x = update.to(dtype)
    x = x.T if tall else x  # (A, B) with A <= B: the Gram matrix is the small one
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class GeoMuon(Optimizer):
    """Muon for the hidden weight matrices of ``model``, the row rule for its token embeddings, AdamW for the rest.

    Built from the model, in one line in ``configure_optimizers``. Every trainable parameter gets exactly one
    rule (see ``lightning_geo.optim.muon_routing`` for the table):

    * ``"muon"``: 2-D weights of linear-like layers (``nn.Linear``, Hugging Face ``Conv1D`` whose weight is
      stored ``(in, out)``: Muon's update of a matrix and of its transpose are transposes of each other, so
      the layout does not matter). A fused QKV projection is orthogonalised as one matrix, as in the reference
      implementations: it needs no knowledge of the model's head layout (litgpt interleaves q, k, v per query
      group), and it is what a sharded (FSDP2) matrix gathers anyway.
    * ``"rows"`` (``embedding_rule``): token embeddings, by [GeoAdamW][lightning_geo.optim.GeoAdamW]'s row rule
      with its default settings (rows not looked up in a step do not move).
    * ``"adamw"``: position embeddings, the output head (tied to the embedding or not), norms, biases, other 1-D
      parameters and kernels of more than 2 dimensions (convolutions), by torch's AdamW.

    **One learning rate for all.** With ``adjust_lr_fn="match_rms_adamw"`` (default) a Muon matrix of shape
    ``(A, B)`` steps by ``lr * 0.2 * sqrt(max(A, B))`` times its orthogonalised momentum, whose RMS is about
    ``1 / sqrt(max(A, B))``: an update of RMS about ``0.2 * lr``, the RMS of a typical AdamW update, so an ``lr``
    tuned for AdamW serves both (Liu et al. 2025). ``"original"`` scales by ``sqrt(max(1, A / B))`` instead
    (Keller Jordan's Muon; it wants an ``lr`` about 0.02). Weight decay is decoupled, ``p *= 1 - lr * wd``, in
    every group.

    **Weight decay.** ``weight_decay`` (default 0.1) applies to matrices: Muon's, an untied output head,
    convolution kernels. Token and position embeddings, a tied head, norms, biases and other 1-D parameters
    take ``other_weight_decay`` (default 0.0: no decay).

    **FSDP2 / tensor parallel.** A Muon matrix sharded as a ``DTensor`` (``strategy="geo_hybrid"``) is
    updated exactly as the whole matrix: its momentum is kept sharded, each step the whole update is gathered
    (``DTensor.full_tensor()``, one all-gather per matrix), every rank orthogonalises it and keeps its own
    shard. AdamW and the row rule act shard by shard.

    **What a step costs.** Newton-Schulz makes ``newton_schulz_flops()`` floating-point operations per step
    (on every rank: a sharded matrix is orthogonalised whole). Nothing is read back to the host.

    Args:
        model: the module to optimize (``self`` in ``configure_optimizers``). Parameters with
            ``requires_grad=False`` are left out.
        lr: learning rate of every group (default 1e-3), AdamW-tuned (see above).
        weight_decay: decoupled weight decay of matrices (default 0.1).
        other_weight_decay: decoupled weight decay of embeddings, a tied head, norms, biases and other 1-D
            parameters (default 0.0).
        momentum: Muon's momentum (default 0.95).
        nesterov: Nesterov momentum for Muon (default True).
        ns_steps: Newton-Schulz iterations per step (default 5, at most 99).
        ns_coefficients: the quintic iteration's coefficients ``(a, b, c)`` (default torch's,
            ``(3.4445, -4.775, 2.0315)``).
        ns_eps: added to the norm that scales the matrix before Newton-Schulz (default 1e-7).
        ns_dtype: the precision of Newton-Schulz: ``"auto"`` (default: bf16, as ``torch.optim.Muon``, on a GPU and
            on a CPU with bf16 instructions; fp32 on a CPU without them, where bf16 products are emulated and a
            GeoMuon step cost 2x an AdamW step on the demo model), ``"bfloat16"`` or ``"float32"``.
        adjust_lr_fn: ``"match_rms_adamw"`` (default) or ``"original"``.
        betas: AdamW's and the row rule's coefficients of the running averages (default ``(0.9, 0.95)``, the
            GPT-style setting).
        eps: AdamW's and the row rule's term added to the denominator (default 1e-8).
        embedding_rule: the rule of token embeddings, ``"rows"`` (default) or ``"adamw"``.
        routes: overrides ``{pattern: rule}``, ``rule`` one of ``"muon"``, ``"adamw"``, ``"rows"``; a pattern is a
            parameter name (as in ``model.named_parameters()``) or a regular expression searched in the names.
            The first matching pattern wins. Default None: no override.
        foreach: AdamW's and the row rule's ``foreach`` (default None: torch's choice, on CUDA tensors).

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or an argument has the wrong type.
        ValueError: for an argument out of range, an unknown rule, a ``routes`` pattern that matches no
            parameter, a model with no trainable parameter, or an ``nn.Embedding(sparse=True)`` not routed to
            ``"rows"``.
        ImportError: if torch is older than 2.9 (no ``torch.optim.Muon``).

    Attributes:
        routes: ``{parameter name: rule}`` of every parameter it updates, with the ``routes`` argument applied
            (passing it back as ``routes=`` gives the same routing).
        route_kinds: ``{parameter name: what it was taken for}`` (``"matrix"``, ``"token_embedding"``,
            ``"position_embedding"``, ``"head"``, ``"tied_head"``, ``"kernel"``, ``"vector"``), whatever rule
            ``routes`` gave it.

    A model with no 2-D hidden matrix for Muon is updated by AdamW everywhere, except where ``routes`` says
    otherwise (it warns once). The routing is
    logged once on rank 0 (``summary()``) and, built from a LightningModule, written once to the Trainer's
    TensorBoard as the text ``geo/optim/routing`` (``routing_table()``) and the scalars ``geo/optim/params_<rule>``
    (weights per rule, at step 0).

    Example:
        ```python
        class LitLM(L.LightningModule):
            def configure_optimizers(self):
                optimizer = GeoMuon(self, lr=3e-4)
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
                return {"optimizer": optimizer, "lr_scheduler": scheduler}
        ```
    """

    geo_dashboard_section: ClassVar[DashboardSection] = DashboardSection.for_part(
        "optim", {"weights per rule (muon, adamw, rows)": (r"^geo/optim/params_(muon|adamw|rows)$",)}
    )
    """This part's section of the GEO dashboard (TensorBoard's Custom Scalars tab)."""

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        *,
        weight_decay: float = 0.1,
        other_weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
        ns_eps: float = 1e-7,
        ns_dtype: str = "auto",
        adjust_lr_fn: str = "match_rms_adamw",
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        embedding_rule: str = "rows",
        routes: Mapping[str, str] | None = None,
        foreach: bool | None = None,
    ) -> None:
        _torch_muon()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"GeoMuon: `model` must be an nn.Module (pass `self` in configure_optimizers), got "
                f"{type(model).__name__}; it routes each parameter by the layer that owns it"
            )
        check_number("GeoMuon", "lr", lr, 0.0)
        check_number("GeoMuon", "weight_decay", weight_decay, 0.0)
        check_number("GeoMuon", "other_weight_decay", other_weight_decay, 0.0)
        check_number("GeoMuon", "momentum", momentum, 0.0, 1.0, high_open=True)
        check_number("GeoMuon", "ns_eps", ns_eps, 0.0)
        check_number("GeoMuon", "eps", eps, 0.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"GeoMuon: `nesterov` must be a bool, got {nesterov!r}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or not 1 <= ns_steps <= 99:
            raise ValueError(f"GeoMuon: `ns_steps` must be an int in [1, 99], got {ns_steps!r}")
        if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
            raise ValueError(f"GeoMuon: `ns_coefficients` must be three numbers (a, b, c), got {ns_coefficients!r}")
        for i, c in enumerate(ns_coefficients):
            check_number("GeoMuon", f"ns_coefficients[{i}]", c, float("-inf"))
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"GeoMuon: `ns_dtype` must be one of {NS_DTYPES}, got {ns_dtype!r}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(f"GeoMuon: `adjust_lr_fn` must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"GeoMuon: `betas` must be a pair (beta1, beta2), got {betas!r}")
        check_number("GeoMuon", "betas[0]", betas[0], 0.0, 1.0, high_open=True)
        check_number("GeoMuon", "betas[1]", betas[1], 0.0, 1.0, high_open=True)
        if not (foreach is None or isinstance(foreach, bool)):
            raise TypeError(f"GeoMuon: `foreach` must be None or a bool, got {foreach!r}")

        routing = route_parameters(model, routes=routes, embedding_rule=embedding_rule)
        if not routing:
            raise ValueError("GeoMuon: `model` has no trainable parameter (none with requires_grad=True)")
        if not any(r.kind == "matrix" for r in routing.values()):
            rank_zero_warn(
                "GeoMuon: the model has no 2-D hidden weight matrix for Muon (only embeddings, an output head, "
                "norms, biases or kernels of more than 2 dimensions), so every parameter is updated by AdamW."
            )
            routing = {n: r if r.overridden else Route("adamw", r.kind, r.decay) for n, r in routing.items()}
        params = dict(model.named_parameters())
        for name, module in model.named_modules():
            if getattr(module, "sparse", False) is True and isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                weight = f"{name}.weight" if name else "weight"
                if weight in routing and routing[weight].rule != "rows":
                    raise ValueError(
                        f"GeoMuon: {weight!r} gets sparse gradients (sparse=True) but is routed to "
                        f"{routing[weight].rule!r}; only 'rows' takes sparse gradients: set embedding_rule='rows' "
                        "or build the embedding with sparse=False"
                    )

        self._rule_defaults: dict[str, dict[str, Any]] = {
            "muon": {"momentum": momentum, "nesterov": nesterov, "ns_coefficients": tuple(ns_coefficients),
                     "eps": ns_eps, "ns_steps": ns_steps, "adjust_lr_fn": adjust_lr_fn, "ns_dtype": ns_dtype},
            "adamw": {"betas": tuple(betas), "eps": eps, "foreach": foreach, "fused": None},
            "rows": {"betas": tuple(betas), "eps": eps, "foreach": foreach, "fused": None, **_ROWS_DEFAULTS},
        }
        groups = []
        for rule in RULES:
            for decay in (True, False):
                members = [params[n] for n, r in routing.items() if r.rule == rule and r.decay == decay]
                if members:
                    wd = weight_decay if decay else other_weight_decay
                    groups.append({"params": members, "rule": rule, "lr": lr, "weight_decay": wd})
        super().__init__(groups, {"lr": lr, "weight_decay": weight_decay})
        self.routes: dict[str, str] = {n: r.rule for n, r in routing.items()}
        self.route_kinds: dict[str, str] = {n: r.kind for n, r in routing.items()}
        self._names = {id(params[n]): n for n in routing}
        rows = [p for g in self.param_groups if g["rule"] == "rows" for p in g["params"]]
        self._rows_optimizer: GeoAdamW | None = GeoAdamW(rows) if rows else None
        # SparsityAwareLR sets no LR multipliers where the row rule scales steps by row frequency itself
        self.applies_row_density_rule = "rows" in self.routes.values()
        rank_zero_info(self.summary())
        # the routing goes to the Trainer's TensorBoard once, at the first step (the Trainer is attached by then)
        self._module_ref = weakref.ref(model) if hasattr(model, "_trainer") else None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group; its ``"rule"`` (default ``"adamw"``) picks its update and its default settings.

        Raises:
            ValueError: for an unknown rule, or a ``"muon"`` group holding a parameter that is not 2-D.
        """
        group = dict(param_group)
        rule = group.setdefault("rule", "adamw")
        if rule not in RULES:
            raise ValueError(f"GeoMuon: a param group's `rule` must be one of {RULES}, got {rule!r}")
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        if rule == "muon":
            for param in group["params"]:
                if isinstance(param, Tensor) and param.dim() != 2:
                    raise ValueError(f"GeoMuon: a 'muon' group takes 2-D matrices only, got shape {tuple(param.shape)}")
        for key, value in self._rule_defaults[rule].items():
            group.setdefault(key, value)
        super().add_param_group(group)

    def mark_positional(self, param: Tensor, reason: str = "", *, name: str | None = None) -> None:
        """Take ``param`` off the row rule: it is a table looked up by position, not by token.

        ``SparsityAwareLR`` calls this for the embeddings it finds looked up by position; a parameter under the
        ``"rows"`` rule is then updated as by AdamW (see
        [`GeoAdamW.mark_positional`][lightning_geo.optim.GeoAdamW.mark_positional]). A parameter under another
        rule is left as it is.

        Raises:
            ValueError: if ``param`` is not one of this optimizer's parameters.
        """
        group = next((g for g in self.param_groups if any(p is param for p in g["params"])), None)
        if group is None:
            raise ValueError("GeoMuon.mark_positional: `param` is not a parameter of this optimizer")
        if group["rule"] == "rows":
            self._rows_view().mark_positional(param, reason, name=name or self._names.get(id(param)))

    def route_counts(self) -> dict[str, int]:
        """Per rule, ``params_<rule>`` (number of weights) and ``tensors_<rule>`` (number of parameters).

        Meant to be logged once, e.g. as ``geo/optim/params_muon``.
        """
        counts = {f"{kind}_{rule}": 0 for rule in RULES for kind in ("params", "tensors")}
        for group in self.param_groups:
            for param in group["params"]:
                counts[f"params_{group['rule']}"] += param.numel()
                counts[f"tensors_{group['rule']}"] += 1
        return counts

    def summary(self) -> str:
        """One line: how many parameters (tensors and weights) each rule updates."""
        counts = self.route_counts()
        parts = [
            f"{rule} {counts[f'tensors_{rule}']} tensors ({counts[f'params_{rule}'] / 1e6:.3g}M weights)"
            for rule in RULES if counts[f"tensors_{rule}"]
        ]
        return "GeoMuon: " + ", ".join(parts) + " (see `optimizer.routes`)"

    def newton_schulz_flops(self) -> int:
        """Floating-point operations of one step's Newton-Schulz iterations, all Muon matrices together.

        A matrix of shape ``(A, B)`` with ``A <= B`` (transposed otherwise) costs, per iteration of the quintic
        ``X <- a X + (b G + c G G) X`` with ``G = X X^T``: ``2 A^2 B`` (``G``) + ``2 A^3`` (``G G``) + ``2 A^2 B``
        (the product with ``X``), so ``ns_steps * (4 A^2 B + 2 A^3)`` in all (element-wise work left out). A
        sharded matrix counts whole: every rank orthogonalises all of it.
        """
        total = 0
        for group in self.param_groups:
            if group["rule"] != "muon":
                continue
            for param in group["params"]:
                a, b = sorted(int(d) for d in param.shape)
                total += group["ns_steps"] * (4 * a * a * b + 2 * a**3)
        return total

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if getattr(self, "_module_ref", None) is not None:
            self._log_routing()
        rows_groups = []  # stepped together by GeoAdamW's row rule
        for group in self.param_groups:
            if group["rule"] == "muon":
                self._muon_step(group)
            elif group["rule"] == "adamw":
                self._adamw_step(group)
            else:
                rows_groups.append(group)
        if rows_groups:
            self._rows_view().step()
        return loss

    def routing_table(self) -> str:
        """The routing as a Markdown table: one row per parameter (name, shape, what it was taken for, rule)."""
        shapes = {n: tuple(p.shape) for g in self.param_groups for p in g["params"] if (n := self._names.get(id(p)))}
        rows = [f"| `{n}` | {shapes.get(n, '')} | {self.route_kinds[n]} | {rule} |" for n, rule in self.routes.items()]
        return "\n".join([self.summary(), "", "| parameter | shape | taken for | rule |", "|---|---|---|---|", *rows])

    def _log_routing(self) -> None:
        """``geo/optim/params_<rule>`` (weights per rule) to the Trainer's loggers and ``geo/optim/routing`` (the
        table) to its TensorBoard loggers, once."""
        module = self._module_ref() if self._module_ref is not None else None
        trainer = getattr(module, "_trainer", None)
        if trainer is None:
            return
        self._module_ref = None
        counts = self.route_counts()
        log_geo_scalars(trainer, "optim", {f"params_{rule}": counts[f"params_{rule}"] for rule in RULES}, step=0,
                        throttle=False)
        log_geo_text(trainer, "optim", "routing", self.routing_table(), step=0, throttle=False)

    def _with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        for param in params:
            if param.grad is not None and param.grad.is_sparse:
                name = self._names.get(id(param), f"a parameter of shape {tuple(param.shape)}")
                raise RuntimeError(
                    f"GeoMuon: {name!r} has a sparse gradient, which its rule {group['rule']!r} cannot take; only "
                    "'rows' takes sparse gradients: route it there or build the embedding with sparse=False"
                )
            if torch.is_complex(param):
                raise RuntimeError("GeoMuon: complex parameters are not supported")
        return params

    def _muon_step(self, group: dict[str, Any]) -> None:
        """torch's Muon update of every matrix of ``group``; a sharded one is gathered, updated whole, re-sliced."""
        whole: list[Tensor] = []
        for param in self._with_grad(group):
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if _is_sharded(param):
                self._sharded_muon_update(param, state["momentum_buffer"], group)
            else:
                whole.append(param)
        muon = _torch_muon()
        lr, momentum = float(group["lr"]), group["momentum"]
        for param in whole:  # torch's single-tensor Muon update, with Newton-Schulz in the group's dtype
            assert param.grad is not None
            buf = self.state[param]["momentum_buffer"]
            buf.lerp_(param.grad, 1 - momentum)
            update = param.grad.lerp(buf, momentum) if group["nesterov"] else buf
            dtype = newton_schulz_dtype(group.get("ns_dtype", "auto"), param.device)
            update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
            param.mul_(1 - lr * group["weight_decay"])
            param.add_(update, alpha=-muon._adjust_lr(lr, group["adjust_lr_fn"], param.shape))

    @staticmethod
    def _sharded_muon_update(param: Tensor, buf: Tensor, group: dict[str, Any]) -> None:
        """torch's single-tensor Muon update of a ``DTensor`` matrix: momentum on the shards, Newton-Schulz whole."""
        from torch.distributed.tensor import DTensor, Replicate

        assert isinstance(param, DTensor) and param.grad is not None
        muon = _torch_muon()
        momentum, lr = group["momentum"], float(group["lr"])
        local_buf, local_grad = local_part(buf), local_part(param.grad)
        local_buf.lerp_(local_grad, 1 - momentum)
        local_update = local_grad.lerp(local_buf, momentum) if group["nesterov"] else local_buf
        mesh, placements = param.device_mesh, param.placements
        update = DTensor.from_local(local_update, mesh, placements, run_check=False, shape=param.shape,
                                    stride=param.stride())
        full = update.full_tensor()  # (A, B): Newton-Schulz needs the whole matrix
        dtype = newton_schulz_dtype(group.get("ns_dtype", "auto"), full.device)
        ortho = orthogonalize(full, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
        # Every rank now holds the same matrix; Replicate -> the parameter's placements is a local slice.
        replicated = DTensor.from_local(ortho, mesh, [Replicate()] * mesh.ndim, run_check=False)
        local_ortho = replicated.redistribute(mesh, placements).to_local()
        local = local_part(param)
        local.mul_(1 - lr * group["weight_decay"])
        local.add_(local_ortho, alpha=-muon._adjust_lr(lr, group["adjust_lr_fn"], param.shape))

    def _adamw_step(self, group: dict[str, Any]) -> None:
        """torch's AdamW update (single-tensor or ``foreach`` kernels) of ``group``, shard by shard."""
        params = self._with_grad(group)
        if not params:
            return
        for param in params:
            state = self.state[param]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.float32)  # on the host, as torch's AdamW keeps it
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # GeoAdamW's own call of torch's AdamW, on the local shards (the step count is shared, not sharded)
        items = []
        for param in params:
            assert param.grad is not None  # _with_grad kept only these
            state = self.state[param]
            shard = {"exp_avg": local_part(state["exp_avg"]), "exp_avg_sq": local_part(state["exp_avg_sq"]),
                     "step": state["step"]}
            items.append((local_part(param), local_part(param.grad), shard))
        GeoAdamW._adamw_step(items, group)

    def _rows_view(self) -> GeoAdamW:
        """A GeoAdamW acting on this optimizer's ``"rows"`` groups and state (the same objects, not copies)."""
        groups = [g for g in self.param_groups if g["rule"] == "rows"]
        rows = self._rows_optimizer
        if rows is None:  # "rows" groups added after construction
            rows = self._rows_optimizer = GeoAdamW([p for g in groups for p in g["params"]])
        # Rebound on every use: load_state_dict replaces this optimizer's groups and state objects.
        rows.param_groups = groups
        rows.state = self.state
        return rows

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; the row rule's ``row_step`` and ``density_ema`` stay float32 whatever the dtype."""
        load_keeping_row_counts_float32(self, state_dict, super().load_state_dict)
