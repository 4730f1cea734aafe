"""``GeoAdamW``: AdamW with row-wise lazy moments and step sizes from row hit frequency and parameter density.

Why: under ``torch.optim.AdamW`` a row of an embedding (or of any weight) that gets no gradient in
a step still moves, because its moments keep decaying and its bias correction keeps advancing
(pytorch #18404): a row touched once drifts several times its real step over the following
zero-gradient steps. ``GeoAdamW`` treats each row (index along dim 0) of a parameter with two or
more dimensions as its own Adam problem:

* a row whose gradient is all zero in a step is *untouched*: its moments are kept as they are,
  its own step count does not advance and the row does not move (except by weight decay when
  ``decay_rows="all"``);
* a touched row is bias-corrected by its own step count ``t_r`` (how many steps it was touched);
* its step size is multiplied by
  ``min(max_row_scale, (t_r / t) ** -row_scale_power * density ** -density_power)``, where ``t``
  is the number of steps the parameter had a gradient at all and ``density`` is the moving average
  (EMA 0.9) of the share of the parameter's rows touched per step.

    - The *row* factor: a row seen in a share ``f`` of the steps takes steps ``f ** -0.5`` times
      larger by default, so the rare row's total movement relative to a frequent row is ``sqrt(f)``:
      the ratio Adagrad's accumulated denominator gives (Duchi et al. 2011), with Adam's moments; the
      Adam counterpart of frequency-aware SGD (Li et al., ICLR 2022), which also sets per-token
      rates from token frequency.
    - The *parameter* factor: a parameter whose steps touch few of its rows (an embedding) updates
      each row in few steps, so each step may be larger, like the ``SparsityAwareLR`` callback's
      rule; an embedding touching 4% of its rows per step takes 5x steps by default. Without it the
      lazy rows alone lost to tuned AdamW in a pilot (the benchmark's word-level LM: 4.72 vs 4.68
      nats); with it they won (4.55).

**What a step costs.** Only parameters that really have untouched rows take the row rule. Which ones do
is checked from the gradients (``row_modes``) at a parameter's first step and then every 100 of its
steps, all parameters together with one host read. Every other parameter (linear weights, norms, biases,
an output head under a full softmax, a token embedding tied to that head, an embedding looked up by
position, absolute or relative) is updated by torch's own AdamW implementation, over all of them at once, with its
single-tensor, ``foreach`` or ``fused`` kernels: exactly ``torch.optim.AdamW``'s numbers and kernels. The
row rule runs on whole tensors, the untouched rows masked by per-row factors, so it reads nothing back
to the host; with ``foreach`` its kernels are batched across the row-wise parameters. (On a CPU, where a
host read costs no stall, it updates only the touched rows instead: see ``rows_on_host``.) One-dimensional
parameters and groups with ``row_wise=False`` always take torch's AdamW. When no row-wise parameter
has untouched rows (a tied embedding and head, as in GPT-2), it says so once.

**Position tables.** A table looked up by position (GPT-2's ``wpe``, T5's ``relative_attention_bias``) has untouched
rows for positions or distances not used yet, not for rare tokens, so it never takes the row rule. GeoAdamW sees
gradients, not indices; it finds such a table from three signals, and names each one it finds once (one
``rank_zero_info`` line): the shape of its touched rows (see ``row_modes``, which also says what that shape
cannot tell), its name where the param groups carry names (built from
``model.named_parameters()``: ``wpe``, ``position...``, ``pos_emb...``, ``relative_attention_bias``), and a mark
from module inspection ([`GeoAdamW.mark_positional`][lightning_geo.optim.GeoAdamW.mark_positional], which
``SparsityAwareLR`` calls for the tables whose looked-up indices come from positions).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any, ClassVar, cast

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adam import adam

from lightning_geo.optim.row_modes import POSITIONAL, RECHECK_EVERY, ROWS, UNTOUCHED, row_modes
from lightning_geo.utils.checks import check_number
from lightning_geo.utils.distributed import local_part
from lightning_geo.utils.positions import position_name_hint
from lightning_geo.utils.rows import touched_rows

_ROW_RULE_MODES = (ROWS, UNTOUCHED)  # the paths that apply the row rule

DECAY_ROWS = ("touched", "all")

_DENSITY_EMA = 0.9  # weight of the old value in a parameter's average share of touched rows
# Per-parameter state kept in float32 whatever the parameter's dtype (torch would cast it on load).
_FLOAT32_STATE = ("row_step", "density_ema")


def load_keeping_row_counts_float32(
    optimizer: Optimizer, state_dict: dict[str, Any], load: Callable[[dict[str, Any]], None]
) -> None:
    """``load(state_dict)`` (torch's ``Optimizer.load_state_dict``, which casts state to each parameter's dtype),
    then put the row rule's ``row_step`` and ``density_ema`` back in float32: counts and averages that a bf16
    parameter's dtype would round."""
    saved = state_dict["state"]
    kept = {
        (pid, key): saved[pid][key]
        for pid in saved
        for key in _FLOAT32_STATE
        if isinstance(saved[pid], dict) and key in saved[pid]
    }
    load(state_dict)
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)
    saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
    for pid, param in zip(saved_ids, params, strict=True):
        for key in _FLOAT32_STATE:
            if (pid, key) in kept:
                optimizer.state[param][key] = kept[pid, key].to(device=param.device, dtype=torch.float32)

_UNSET = -1.0  # density_ema before the parameter's first step under the row rule

# Bias corrections of rows never touched are 0; clamping them keeps 0 / 0 out of the arithmetic
# (such rows get a step size of exactly 0 anyway).
_TINY = 1e-30


_SHARE_KEY = "_touched_share_of_all_shards"  # set in a step's state view of a sharded parameter, never stored


def _is_sharded(value: Any) -> bool:
    return isinstance(value, Tensor) and hasattr(value, "placements")


def _local_view(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with each sharded tensor replaced by this rank's shard (sharing storage: in-place updates land)."""
    return {k: local_part(v) if _is_sharded(v) else v for k, v in state.items()}


def _row_vector_like(param: Tensor) -> Tensor:
    """Float32 zeros with one entry per row (dim 0) of ``param``, sharded like its rows when it is a DTensor.

    Sharded, the hit counts are saved and re-sharded with the parameter by distributed checkpoints.
    """
    if not _is_sharded(param):
        return torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
    from torch.distributed.tensor import DTensor, Replicate, Shard

    assert isinstance(param, DTensor)  # _is_sharded
    local = local_part(param)
    placements = [Shard(0) if p.is_shard(0) else Replicate() for p in param.placements]
    zeros = torch.zeros(local.shape[0], dtype=torch.float32, device=local.device)
    return DTensor.from_local(zeros, param.device_mesh, placements, shape=param.shape[:1], stride=(1,))


def _rows_on_host(group: dict[str, Any], param: Tensor) -> bool:
    on_host = group["rows_on_host"]
    return param.device.type == "cpu" if on_host is None else on_host


class GeoAdamW(Optimizer):
    """AdamW with lazy, row-wise moments and step sizes scaled by row hit frequency and parameter density.

    Args:
        params: parameters or param-group dicts, as for any ``torch.optim`` optimizer.
        lr: learning rate (default 1e-3).
        betas: coefficients of the running averages of the gradient and its square
            (default ``(0.9, 0.999)``).
        eps: term added to the denominator (default 1e-8).
        weight_decay: decoupled weight decay coefficient, as in AdamW (default 1e-2).
        row_wise: treat each row (dim 0) of parameters with two or more dimensions lazily
            (default True). ``False`` makes the group plain AdamW.
        row_scale_power: exponent of the row factor ``hit_rate ** -p``, where ``hit_rate`` is the
            share of the parameter's steps in which the row was touched (default 0.5; 0 disables it).
        max_row_scale: upper bound of the whole step multiplier, row and parameter factors together
            (default 10.0, must be >= 1).
        density_power: exponent of the parameter factor ``density ** -p``, where ``density`` is the
            moving average of the share of the parameter's rows touched per step (default 0.5; 0
            disables it).
        decay_rows: which rows of a row-wise parameter weight decay shrinks each step:
            ``"touched"`` (default: only rows with a gradient, so untouched rows stay exactly put)
            or ``"all"`` (every row, every step, like AdamW).
        foreach: update all tensors of a group with ``torch._foreach_*`` kernels (default: torch's
            AdamW default, on CUDA tensors). The result is the same either way.
        fused: update the parameters updated as by AdamW with torch's fused AdamW kernel (default
            None: off, as in ``torch.optim.AdamW``). Cannot be combined with ``foreach=True``.
        rows_on_host: how a parameter taking the row rule finds its touched rows each step. True: read
            their indices (one host read per such parameter and step) and update only those rows, the
            least arithmetic; False: update whole tensors with untouched rows masked, no host read, the
            fewest stalls on an accelerator. Default None: True for parameters on the CPU (where a host
            read waits for nothing), False elsewhere. The result is the same either way.

    Parameters sharded by FSDP2 or tensor parallel (``DTensor``, e.g. under ``strategy="geo_hybrid"``) are
    updated shard by shard: rows are independent problems. For those that take the row rule, one small
    all-reduce per step gives the parameter factor the whole parameter's share of touched rows, so a sharded
    run takes the same steps as an unsharded one; the check of which parameters take it is all-reduced too,
    so every rank picks the same path.

    Gradients may be dense (``nn.Embedding`` default) or sparse (``nn.Embedding(sparse=True)``);
    a sparse gradient's listed rows count as touched. ``state_dict()`` holds, per parameter,
    ``step``, ``exp_avg``, ``exp_avg_sq`` (as torch's AdamW) and, for parameters of ``row_wise`` groups with
    two or more dimensions, ``row_mode`` (the path last chosen, an int: see ``row_modes.MODE_NAMES``),
    ``row_mode_age`` (steps since that check), ``row_step`` (count of touched steps per row under the row
    rule) and ``density_ema``, both kept in float32 even for low-precision parameters.
    """

    applies_row_density_rule: ClassVar[bool] = True
    """It scales its steps by row frequency and parameter density itself, so ``SparsityAwareLR`` sets no LR
    multipliers for it (see ``lightning_geo.utils.rows.ROW_DENSITY_RULE``)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        row_wise: bool = True,
        row_scale_power: float = 0.5,
        max_row_scale: float = 10.0,
        density_power: float = 0.5,
        decay_rows: str = "touched",
        foreach: bool | None = None,
        fused: bool | None = None,
        rows_on_host: bool | None = None,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "row_wise": row_wise,
            "row_scale_power": row_scale_power,
            "max_row_scale": max_row_scale,
            "density_power": density_power,
            "decay_rows": decay_rows,
            "foreach": foreach,
            "fused": fused,
            "rows_on_host": rows_on_host,
        }
        self._validate_group(defaults)
        super().__init__(params, defaults)
        self._warned_no_rows = False
        self._position_hints: dict[int, tuple[str, str | None]] = {}  # id(param) -> (why, name): mark_positional
        self._named_positional: set[int] = set()  # ids of the parameters already named as position tables

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (as ``torch.optim.Optimizer.add_param_group``), validating its settings."""
        super().add_param_group(param_group)
        self._validate_group(self.param_groups[-1])

    @staticmethod
    def _validate_group(group: dict[str, Any]) -> None:
        lr = group["lr"]
        if isinstance(lr, Tensor):
            if lr.numel() != 1:
                raise ValueError("GeoAdamW: a tensor `lr` must have one element")
        else:
            check_number("GeoAdamW", "lr", lr, 0.0, float("inf"))
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"GeoAdamW: `betas` must be a pair (beta1, beta2), got {betas!r}")
        check_number("GeoAdamW", "betas[0]", betas[0], 0.0, 1.0)
        check_number("GeoAdamW", "betas[1]", betas[1], 0.0, 1.0)
        if betas[0] >= 1.0 or betas[1] >= 1.0:
            raise ValueError(f"GeoAdamW: `betas` must each be in [0, 1), got {tuple(betas)}")
        check_number("GeoAdamW", "eps", group["eps"], 0.0, float("inf"))
        check_number("GeoAdamW", "weight_decay", group["weight_decay"], 0.0, float("inf"))
        check_number("GeoAdamW", "row_scale_power", group["row_scale_power"], 0.0, 4.0)
        check_number("GeoAdamW", "max_row_scale", group["max_row_scale"], 1.0, float("inf"))
        check_number("GeoAdamW", "density_power", group["density_power"], 0.0, 4.0)
        if not isinstance(group["row_wise"], bool):
            raise TypeError(f"GeoAdamW: `row_wise` must be a bool, got {group['row_wise']!r}")
        if group["decay_rows"] not in DECAY_ROWS:
            raise ValueError(f"GeoAdamW: `decay_rows` must be one of {DECAY_ROWS}, got {group['decay_rows']!r}")
        if not (group["foreach"] is None or isinstance(group["foreach"], bool)):
            raise TypeError(f"GeoAdamW: `foreach` must be None or a bool, got {group['foreach']!r}")
        if not (group["fused"] is None or isinstance(group["fused"], bool)):
            raise TypeError(f"GeoAdamW: `fused` must be None or a bool, got {group['fused']!r}")
        if not (group["rows_on_host"] is None or isinstance(group["rows_on_host"], bool)):
            raise TypeError(f"GeoAdamW: `rows_on_host` must be None or a bool, got {group['rows_on_host']!r}")
        if group["fused"] and group["foreach"]:
            raise ValueError("GeoAdamW: `fused=True` and `foreach=True` cannot be combined; set one of them")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("fused", None)  # state dicts saved before GeoAdamW had these
            group.setdefault("rows_on_host", None)
        self.__dict__.setdefault("_warned_no_rows", False)
        self.__dict__.setdefault("_position_hints", {})
        self.__dict__.setdefault("_named_positional", set())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; ``row_step`` and ``density_ema`` stay float32 whatever the parameter dtype."""
        load_keeping_row_counts_float32(self, state_dict, super().load_state_dict)

    def mark_positional(self, param: Tensor, reason: str = "", *, name: str | None = None) -> None:
        """Take ``param`` off the row rule for good: it is a table looked up by position, not by token.

        ``SparsityAwareLR`` calls this for the embeddings it finds looked up by position from their indices (see
        ``embedding_lookups.position_lookup_reason``): the gradient check alone (see ``row_modes``) misses bucket
        layouts it does not know. Such a parameter is updated as by torch's AdamW from its next step on.

        Args:
            param: A parameter of this optimizer.
            reason: How it was found, for the one line that names it.
            name: Its name, where the param groups do not carry names.

        Raises:
            ValueError: if ``param`` is not one of this optimizer's parameters.
        """
        if not any(p is param for group in self.param_groups for p in group["params"]):
            raise ValueError("GeoAdamW.mark_positional: `param` is not a parameter of this optimizer")
        self._position_hints[id(param)] = (reason or "marked as looked up by position", name)
        state = self.state.get(param)
        if state and state.get("row_mode") in _ROW_RULE_MODES:
            state["row_mode_age"] = RECHECK_EVERY  # checked again, and taken off the row rule, at its next step

    def _position_hint(self, param: Tensor, index: int, group: dict[str, Any]) -> tuple[str, str] | None:
        """``(name, why)`` when a mark or the parameter's name says it is looked up by position, else None."""
        names = group.get("param_names")
        name = names[index] if names is not None and index < len(names) else None
        hint = self._position_hints.get(id(param))
        if hint is not None:
            return hint[1] or name or self._describe(param), hint[0]
        if name is not None and position_name_hint(name):
            return name, "its name says it is a position table"
        return None

    def _describe(self, param: Tensor) -> str:
        for g, group in enumerate(self.param_groups):
            for i, p in enumerate(group["params"]):
                if p is param:
                    names = group.get("param_names")
                    if names is not None and i < len(names):
                        return str(names[i])
                    return f"parameter {i} of param group {g} (shape {tuple(param.shape)})"
        return f"a parameter of shape {tuple(param.shape)}"

    def row_hit_counts(self, param: Tensor) -> Tensor | None:
        """How many steps each row of ``param`` was touched (float32, shape ``[rows]``), or None.

        None when ``param`` has not taken the row rule (it is not row-wise, every row was touched at
        every check so far, or it has not stepped yet). For a parameter sharded by rows
        (FSDP2) it is a ``DTensor`` sharded like the parameter's dim 0.
        """
        state = self.state.get(param, {})
        rows = state.get("row_step")
        if rows is None or state.get("row_mode") not in (None, *_ROW_RULE_MODES):
            return None
        return rows.clone()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_row_modes()
        shares = self._sharded_touched_shares()
        for group in self.param_groups:
            adamw: list[tuple[Tensor, Tensor, dict[str, Any]]] = []
            rows: list[tuple[Tensor, Tensor, dict[str, Any]]] = []
            views: list[tuple[dict[str, Any], dict[str, Any]]] = []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._init_state(param, group)
                # A sharded parameter (FSDP2, tensor parallel) is updated through this rank's shard: the
                # update is row-wise, so each rank's rows are a complete problem of their own.
                local, grad, view = local_part(param), local_part(param.grad), _local_view(state)
                if id(param) in shares:
                    view[_SHARE_KEY] = shares[id(param)]
                views.append((state, view))
                if grad.is_sparse:
                    self._sparse_step(local, grad, view, group)
                elif state.get("row_mode") in _ROW_RULE_MODES and _rows_on_host(group, local):
                    index = touched_rows(grad).nonzero().squeeze(1)
                    self._rows_step(local, index, grad.index_select(0, index), view, group)
                elif state.get("row_mode") in _ROW_RULE_MODES:
                    rows.append((local, grad, view))
                else:
                    adamw.append((local, grad, view))
            if adamw:
                self._adamw_step(adamw, group)
            if rows:
                self._masked_rows_step(rows, group)
            for state, view in views:
                view.pop(_SHARE_KEY, None)
                state.update({k: v for k, v in view.items() if not _is_sharded(state.get(k))})
        return loss

    def _check_row_modes(self) -> None:
        """Pick the path of every row-wise parameter due for a check, all with one host read (see ``row_modes``).

        A parameter is due at its first step and then every ``RECHECK_EVERY`` of its steps. The first time no
        row-wise parameter has untouched rows, this says once that the row rule has nothing to act on.
        """
        due: list[tuple[Tensor, dict[str, Any], tuple[str, str] | None]] = []
        for group in self.param_groups:
            if not group["row_wise"]:
                continue
            for index, param in enumerate(group["params"]):
                if param.grad is None or param.dim() < 2 or param.grad.is_sparse:
                    continue
                state = self.state[param]
                since = state.get("row_mode_age", RECHECK_EVERY)
                if since >= RECHECK_EVERY:
                    due.append((param, state, self._position_hint(param, index, group)))
                else:
                    state["row_mode_age"] = since + 1
        if not due:
            return
        sharded = any(_is_sharded(p) for p, _, _ in due)
        grads = [local_part(cast(Tensor, p.grad)) for p, _, _ in due]  # all have one
        modes = row_modes(grads, all_reduce=sharded, positional=[hint is not None for _, _, hint in due])
        for (param, state, hint), mode in zip(due, modes, strict=True):
            if mode == POSITIONAL and id(param) not in self._named_positional:
                self._named_positional.add(id(param))
                name, why = hint if hint is not None else (
                    self._describe(param), "its touched rows have the shape of a position lookup")
                rank_zero_info(f"GeoAdamW: {name} is looked up by position ({why}), not by token: it is updated as "
                               "by torch's AdamW, never by the row rule or its density boost.")
            if mode in _ROW_RULE_MODES and state.get("row_mode") not in (None, *_ROW_RULE_MODES):
                # Updated as AdamW since the last check, every row was (as far as the checks saw) touched.
                local_part(state["row_step"]).fill_(0).add_(state["step"].to(param.device))
            # An all-zero gradient tells nothing: check again at the next step.
            state["row_mode"], state["row_mode_age"] = mode, RECHECK_EVERY if mode == UNTOUCHED else 1
        if not self._warned_no_rows and all(
            s.get("row_mode") not in _ROW_RULE_MODES
            for g in self.param_groups if g["row_wise"] for p in g["params"] if (s := self.state.get(p))
        ):
            self._warned_no_rows = True
            rank_zero_warn(
                "GeoAdamW: no parameter in a `row_wise` group has untouched rows, so its row rule has nothing to act "
                "on and every parameter is updated exactly as by torch's AdamW. (A token embedding tied to the "
                "output head, as in GPT-2, gets a gradient in every row; an embedding looked up by position is "
                f"not a sparse one.) It checks again every {RECHECK_EVERY} steps."
            )

    def _sharded_touched_shares(self) -> dict[int, Tensor]:
        """``{id(param): share of its rows touched this step}`` of every row-wise parameter sharded as a DTensor.

        Each rank sees only its shard's rows; one all-reduce over all ranks (of every such parameter's touched
        and total local rows together) gives the whole parameter's share, so the density factor is the same
        as in an unsharded run. Ranks holding the same shard (HSDP replicas) count it equally in both sums.
        """
        items = [
            p for group in self.param_groups if group["row_wise"] and group["density_power"]
            for p in group["params"]
            if p.grad is not None and _is_sharded(p) and not p.grad.is_sparse
            and self.state.get(p, {}).get("row_mode") in _ROW_RULE_MODES
        ]
        if not items:
            return {}
        grads = [local_part(p.grad) for p in items]
        counts = torch.stack([
            torch.stack([touched_rows(g).sum().to(torch.float64), torch.tensor(float(g.shape[0]), device=g.device,
                                                                                dtype=torch.float64)])
            for g in grads
        ])  # (params, 2): touched rows, rows of this rank's shard
        torch.distributed.all_reduce(counts)
        return {id(p): (c[0] / c[1].clamp_min(1.0)).float() for p, c in zip(items, counts, strict=True)}

    def _init_state(self, param: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[param]
        if "step" not in state:
            # As torch's Adam: the step count lives on the host unless the fused kernels need it on the device.
            on_device = group["fused"]
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device if on_device else "cpu")
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            if group["row_wise"] and param.dim() >= 2:
                # Made for every row-wise parameter, whichever path it takes, so that the state's keys do not
                # depend on the path: a distributed checkpoint loads into a state made by a step on zero gradients.
                state["row_step"] = _row_vector_like(param)
                state["density_ema"] = torch.full((), _UNSET, dtype=torch.float32, device=param.device)
        if param.grad is not None and param.grad.is_sparse and "row_step" not in state:
            raise RuntimeError("GeoAdamW: sparse gradients need `row_wise=True` for their parameter's group")
        return state

    @staticmethod
    def _adamw_step(items: list[tuple[Tensor, Tensor, dict[str, Any]]], group: dict[str, Any]) -> None:
        """torch's own AdamW update (its single-tensor, ``foreach`` or ``fused`` kernels) over all ``items``."""
        beta1, beta2 = group["betas"]
        adam(
            [p for p, _, _ in items],
            [g for _, g, _ in items],
            [s["exp_avg"] for _, _, s in items],
            [s["exp_avg_sq"] for _, _, s in items],
            [],
            [s["step"] for _, _, s in items],
            foreach=group["foreach"],
            fused=group["fused"],
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )

    @staticmethod
    def _row_scale(row_step: Tensor, state: dict[str, Any], group: dict[str, Any], touched_share: Tensor) -> Tensor:
        """Step multiplier of each row: ``hit_rate ** -row_scale_power * density ** -density_power``, capped.

        Also folds this step's share of touched rows into the parameter's density average (EMA 0.9).
        """
        scale = torch.ones_like(row_step)
        power = group["row_scale_power"]
        if power:
            hit_rate = (row_step / state["step"].to(row_step.device)).clamp_min(_TINY)
            scale = hit_rate.pow(-power)
        density_power = group["density_power"]
        if density_power:
            share = touched_share.to(device=row_step.device, dtype=torch.float32)
            ema = state.get("density_ema")
            if ema is None:  # a state dict saved before density_ema was made with the state
                ema = state["density_ema"] = torch.full_like(share, _UNSET)
            ema.copy_(torch.where(ema < 0, share, ema.mul(_DENSITY_EMA).add_(share, alpha=1.0 - _DENSITY_EMA)))
            scale = scale * ema.to(row_step.dtype).clamp_min(_TINY).pow(-density_power)
        return scale.clamp_max(group["max_row_scale"])

    def _row_factors(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> tuple:
        """Per-row factors: decay, lerp weight of exp_avg, beta2, step size, sqrt(bias correction 2).

        Untouched rows get decay 1 (or AdamW's with ``decay_rows="all"``), lerp weight 0, beta2 1 and
        step size 0, so neither their moments nor their values change.
        """
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        state["step"] += 1
        shape = (-1,) + (1,) * (param.dim() - 1)
        touched = touched_rows(grad)
        row_step = state["row_step"]
        row_step += touched
        # Row factors in float64 so the bias corrections match AdamW's Python-float arithmetic.
        touched_f = touched.to(torch.float64)
        row_step = row_step.to(torch.float64)
        bc1 = (1.0 - beta1**row_step).clamp_min(_TINY)
        bc2_sqrt = (1.0 - beta2**row_step).sqrt().clamp_min(_TINY)
        share = state.get(_SHARE_KEY, touched_f.mean())
        step_size = touched_f * lr * self._row_scale(row_step, state, group, share) / bc1
        decayed = torch.ones_like(touched_f) if group["decay_rows"] == "all" else touched_f
        decay = 1.0 - lr * wd * decayed
        beta1_weight = (1.0 - beta1) * touched_f
        beta2_rows = torch.where(touched, beta2, 1.0)

        def rows(t: Tensor) -> Tensor:
            return t.view(shape).to(param.dtype)

        return rows(decay), rows(beta1_weight), rows(beta2_rows), rows(step_size), rows(bc2_sqrt)

    def _masked_rows_step(self, items: list[tuple[Tensor, Tensor, dict[str, Any]]], group: dict[str, Any]) -> None:
        """The row rule on whole tensors, untouched rows masked by their factors: no host read, batched.

        Batched with ``torch._foreach_*`` kernels across the parameters where the group's ``foreach`` is on
        (default: CUDA tensors).
        """
        beta2 = group["betas"][1]
        params = [p for p, _, _ in items]
        grads = [g for _, g, _ in items]
        exp_avgs = [s["exp_avg"] for _, _, s in items]
        exp_avg_sqs = [s["exp_avg_sq"] for _, _, s in items]
        factors = [self._row_factors(p, g, s, group) for p, g, s in items]
        decays, beta1_weights, beta2s, step_sizes, bc2_sqrts = (list(f) for f in zip(*factors, strict=True))
        foreach = group["foreach"]
        if foreach is None:
            foreach = all(p.is_cuda for p in params)
        if foreach:
            torch._foreach_mul_(params, decays)
            torch._foreach_lerp_(exp_avgs, grads, beta1_weights)
            torch._foreach_mul_(exp_avg_sqs, beta2s)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
            denoms = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denoms, bc2_sqrts)
            torch._foreach_add_(denoms, group["eps"])
            updates = torch._foreach_mul(exp_avgs, step_sizes)
            torch._foreach_div_(updates, denoms)
            torch._foreach_sub_(params, updates)
            return
        for i, param in enumerate(params):
            param.mul_(decays[i])
            exp_avgs[i].lerp_(grads[i], beta1_weights[i])
            exp_avg_sqs[i].mul_(beta2s[i]).addcmul_(grads[i], grads[i], value=1.0 - beta2)
            denom = exp_avg_sqs[i].sqrt().div_(bc2_sqrts[i]).add_(group["eps"])
            param.sub_(exp_avgs[i].mul(step_sizes[i]).div_(denom))

    def _sparse_step(self, param: Tensor, grad: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Update only the rows a sparse gradient lists (``nn.Embedding(sparse=True)``)."""
        grad = grad.coalesce()
        if grad.sparse_dim() != 1:
            raise RuntimeError("GeoAdamW: sparse gradients must be sparse along dim 0 only (as nn.Embedding's)")
        self._rows_step(param, grad.indices()[0], grad.values(), state, group)

    def _rows_step(
        self, param: Tensor, index: Tensor, values: Tensor, state: dict[str, Any], group: dict[str, Any]
    ) -> None:
        """Update the rows ``index`` (unique) of ``param`` whose gradient rows are ``values``; others stay."""
        lr = float(group["lr"])
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        state["step"] += 1
        row_step = state["row_step"]
        row_step[index] += 1
        shape = (-1,) + (1,) * (param.dim() - 1)
        if wd and group["decay_rows"] == "all":
            param.mul_(1.0 - lr * wd)
        rows_step = row_step[index].to(torch.float64)
        exp_avg = state["exp_avg"][index].lerp_(values, 1.0 - beta1)
        exp_avg_sq = state["exp_avg_sq"][index].mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
        state["exp_avg"].index_copy_(0, index, exp_avg)
        state["exp_avg_sq"].index_copy_(0, index, exp_avg_sq)
        share = state.get(_SHARE_KEY, torch.tensor(index.numel() / max(param.shape[0], 1)))
        step_size = lr * self._row_scale(rows_step, state, group, share) / (1.0 - beta1**rows_step)
        bc2_sqrt = (1.0 - beta2**rows_step).sqrt()
        denom = exp_avg_sq.sqrt().div_(bc2_sqrt.view(shape).to(param.dtype)).add_(group["eps"])
        rows = param[index]
        if wd and group["decay_rows"] == "touched":
            rows.mul_(1.0 - lr * wd)
        rows.sub_(exp_avg.mul(step_size.view(shape).to(param.dtype)).div_(denom))
        param.index_copy_(0, index, rows)
