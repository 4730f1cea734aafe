"""The Gaussian-process surrogate: outcome warping, fitting in double precision, parameter importance.

Inputs arrive already normalised by [`SearchSpace`][lightning_geo.tuning.SearchSpace] (unit-cube columns and
category indices). Outcomes are in *maximisation* form (``-loss`` for a minimised metric). A single
objective is first warped by ``outcome_warp``, the mean of two views of the values:

* ``robust_warp``: standardised by the median and median absolute deviation, the bad tail (more than 2
  robust standard deviations below the median) compressed logarithmically and floored. A diverged run that
  returns a loss of 1e9, or a failed trial imputed at the worst value, then weighs little more than a bad
  ordinary trial, where a plain standardised GP would be dragged by it for the rest of the study (the HEBO
  paper, Cowen-Rivers et al. 2022, warps outputs for the same reason), while the good side stays linear, so
  expected improvement sees *how much* better the best trials are.
* ``rank_warp``: the standard-normal quantiles of the ranks (a Gaussian copula). It keeps the best trials
  apart where the values are skewed: when the good ones are bunched at the top of a long spread, the robust
  view alone puts them within a few hundredths of each other and the GP sees a flat top.

Each alone lost a problem of ``benchmarks/tuning.py`` by 20-100 points that the other won (the ranks on the
smooth test functions, the robust view on a skewed cross-validation error); their mean kept both. Outcomes are
then standardised (BoTorch's ``Standardize``) as usual.

Categorical columns use BoTorch's ``MixedSingleTaskGP`` (a sum and product of a continuous kernel and a
categorical kernel); without categoricals a ``SingleTaskGP`` with BoTorch's default dimension-scaled
length-scale prior (Hvarfner et al. 2024). Integer columns are modelled as continuous and snapped to their
grid when decoded.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import torch
from scipy.stats import rankdata

BAD_TAIL_START = 2.0
"""Robust standard deviations below the median where ``robust_warp`` starts compressing."""
BAD_TAIL_DEPTH = 3.0
"""How far below ``BAD_TAIL_START`` the compressed tail may reach (the floor is at -5)."""


def robust_warp(Y: torch.Tensor) -> torch.Tensor:
    """Warp each column of ``n x m`` values (larger is better) for the GP, keeping their order.

    Each column is centred on its median and divided by ``1.4826 * MAD`` (its standard deviation where the MAD is
    0; a constant column becomes 0). Values above ``-BAD_TAIL_START`` stay linear; below it ``z`` becomes
    ``-BAD_TAIL_START - log1p(-z - BAD_TAIL_START)``, floored at ``-BAD_TAIL_START - BAD_TAIL_DEPTH``: a
    value 1e9 below the rest lands at -5, next to the other bad trials, not 1e9 away.
    """
    median = Y.median(dim=0).values
    mad = (Y - median).abs().median(dim=0).values * 1.4826
    scale = torch.where(mad > 0, mad, Y.std(dim=0, correction=0) if len(Y) > 1 else torch.zeros_like(mad))
    z = (Y - median) / torch.where(scale > 0, scale, torch.ones_like(scale))
    bad = -BAD_TAIL_START - torch.log1p((-z - BAD_TAIL_START).clamp(min=0.0))
    return torch.where(z < -BAD_TAIL_START, bad.clamp(min=-BAD_TAIL_START - BAD_TAIL_DEPTH), z)


def rank_warp(Y: torch.Tensor) -> torch.Tensor:
    """Replace each column of ``n x m`` values by the standard-normal quantiles of their ranks (a Gaussian copula).

    Ties share the mean of their ranks; rank ``r`` of ``n`` (from 1) maps to the quantile ``(r - 0.5) / n``, so the
    result stays within about +-3.2 for up to 700 values and keeps their order.
    """
    n = Y.shape[0]
    ranks = torch.as_tensor(rankdata(Y.detach().cpu().numpy(), axis=0), dtype=Y.dtype, device=Y.device)
    return torch.special.ndtri((ranks - 0.5) / n)


def outcome_warp(Y: torch.Tensor) -> torch.Tensor:
    """Warp each column of ``n x m`` values (larger is better) for the GP: the mean of ``robust_warp`` and
    ``rank_warp``, which keeps the order of the values (see the module's docstring for why both)."""
    return 0.5 * robust_warp(Y) + 0.5 * rank_warp(Y)


def fit_surrogate(
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    cat_dims: list[int],
    warm_start: dict[str, torch.Tensor] | None = None,
    max_iterations: int = 100,
    max_fit_points: int | None = None,
) -> Any:
    """Fit a GP to ``n x d`` inputs and ``n x m`` (already warped) outcomes, in double precision.

    With more than ``max_fit_points`` observations the hyperparameters are fitted on a subset of that many (the
    best half by the first outcome, the rest spread evenly over the others) and the returned model is then
    conditioned on *all* observations with those hyperparameters: the likelihood's cost grows with ``n``
    cubed, while the hyperparameters (length scales, noise) are already well determined by a few hundred
    points.

    Args:
        X: ``n x d`` normalised inputs.
        Y: ``n x m`` outcomes, larger is better.
        cat_dims: Columns of ``X`` that hold category indices.
        warm_start: A previous fit's ``state_dict`` to start the hyperparameters from (same ``d`` and ``m``), so
            the fit starts near the last ask's optimum instead of at the priors.
        max_iterations: L-BFGS-B iterations for the marginal likelihood (caps the time per ``ask``).
        max_fit_points: Observations the hyperparameters are fitted on (``None``: all of them).

    Returns:
        The fitted BoTorch model (``SingleTaskGP`` or ``MixedSingleTaskGP``) in eval mode.
    """
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    X, Y = X.to(torch.double), Y.to(torch.double)
    if max_fit_points is not None and X.shape[0] > max_fit_points:
        subset = _fit_subset(Y[:, 0], max_fit_points)
        fitted = fit_surrogate(X[subset], Y[subset], cat_dims=cat_dims, warm_start=warm_start,
                               max_iterations=max_iterations)
        hyper = {k: v for k, v in fitted.state_dict().items() if not k.startswith(("outcome_transform", "train_"))}
        return _build(X, Y, cat_dims, hyper).eval()
    with warnings.catch_warnings():
        # BoTorch's data checks (e.g. all outcomes equal) and single-fit optimisation warnings are noise here: the
        # study goes on with whatever the fit gives, and a fit that fails outright raises below.
        warnings.simplefilter("ignore")
        model = _build(X, Y, cat_dims, warm_start)
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        try:
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": max_iterations}})
        except ModelFittingError:
            if warm_start is None:
                raise
            return fit_surrogate(X, Y, cat_dims=cat_dims, warm_start=None, max_iterations=max_iterations)
    model.eval()
    return model


def condition_surrogate(
    X: torch.Tensor, Y: torch.Tensor, *, cat_dims: list[int], hyperparameters: dict[str, torch.Tensor]
) -> Any:
    """The GP of ``fit_surrogate`` on ``n x d`` inputs and ``n x m`` outcomes with given hyperparameters (a
    previous fit's ``state_dict``), without optimising them: the cheap update between two fits.

    Returns:
        The BoTorch model in eval mode.
    """
    return _build(X.to(torch.double), Y.to(torch.double), cat_dims, hyperparameters).eval()


def _fit_subset(y: torch.Tensor, size: int) -> torch.Tensor:
    """Indices of ``size`` observations to fit hyperparameters on: the best half by ``y`` (larger is better),
    then the others evenly spaced in telling order (deterministic)."""
    best = torch.topk(y, size // 2).indices
    rest = torch.ones(len(y), dtype=torch.bool)
    rest[best] = False
    others = torch.nonzero(rest).reshape(-1)
    spread = others[torch.linspace(0, len(others) - 1, size - len(best)).round().long()]
    return torch.cat([best, spread]).sort().values


def _build(X: torch.Tensor, Y: torch.Tensor, cat_dims: list[int], hyper: dict[str, torch.Tensor] | None) -> Any:
    """A ``SingleTaskGP`` (``MixedSingleTaskGP`` with categorical columns) on standardised outcomes, its
    hyperparameters loaded from ``hyper`` (a previous model's ``state_dict``) where the shapes match."""
    from botorch.models import MixedSingleTaskGP, SingleTaskGP
    from botorch.models.transforms import Standardize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's input data checks; see fit_surrogate
        transform = Standardize(m=Y.shape[-1])
        if cat_dims:
            model = MixedSingleTaskGP(X, Y, cat_dims=cat_dims, outcome_transform=transform)
        else:
            model = SingleTaskGP(X, Y, outcome_transform=transform)
    if hyper is not None:
        hyper = {k: v for k, v in hyper.items() if not k.startswith(("outcome_transform", "train_", "input"))}
        with contextlib.suppress(RuntimeError):  # shapes changed (not for one space); then fit from the priors
            model.load_state_dict(hyper, strict=False)
    return model


def log_expected_improvement(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The analytic log expected improvement of a fitted single-output GP (``fit_surrogate``), over the best
    posterior mean at its training inputs, as a differentiable function of ``b x d`` inputs returning ``b`` values.

    It equals BoTorch's ``LogExpectedImprovement`` up to a constant (it works in the standardised outcome space,
    checked to 1e-11) at half the cost or less per evaluation: the training covariance is factorised once, not
    rebuilt by GPyTorch on every call, which matters to a gradient ascent that calls it ~30 times per ask.
    """
    from botorch.acquisition.analytic import _log_ei_helper

    X = model.train_inputs[0]
    kernel = model.covar_module
    with torch.no_grad():
        K = kernel(X).to_dense()
        factor = torch.linalg.cholesky(K + model.likelihood.noise.reshape(-1)[0] * torch.eye(len(X), dtype=X.dtype))
        constant = model.mean_module.constant.reshape(())
        alpha = torch.cholesky_solve(model.train_targets.reshape(-1, 1) - constant, factor)
        best_f = (constant + K @ alpha).max()

    def log_ei(x: torch.Tensor) -> torch.Tensor:
        k = kernel(x, X).to_dense()
        mean = constant + (k @ alpha).squeeze(-1)
        v = torch.linalg.solve_triangular(factor, k.T, upper=False)
        sigma = (kernel(x, diag=True) - (v * v).sum(0)).clamp_min(1e-12).sqrt()
        return _log_ei_helper((mean - best_f) / sigma) + sigma.log()

    return log_ei


def mean_sensitivity(model: Any, background: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
    """How much the GP's posterior mean moves along each input column: a parameter importance.

    For every background point and every column ``i``, column ``i`` is swept over ``grids[i]`` (all categories of
    a categorical, a grid of the unit interval otherwise) with the other columns held; the importance of ``i``
    is the mean over background points of the range (max - min) of the posterior mean along the sweep,
    normalised so that the importances sum to 1. Unlike raw lengthscales this compares categorical and
    continuous columns on one scale (the objective's) and cannot be fooled by a kernel whose output scale is
    near zero.

    Args:
        model: A fitted BoTorch model (several outputs: their ranges are averaged).
        background: ``b x d`` points of the space (already snapped).
        grids: For each of the ``d`` columns, the values to sweep it over.

    Returns:
        A length-``d`` double tensor of shares summing to 1 (uniform if the mean is flat).
    """
    ranges = []
    with torch.no_grad():
        for i, grid in enumerate(grids):
            X = background.unsqueeze(0).repeat(len(grid), 1, 1)  # (g, b, d)
            X[..., i] = grid.to(X).unsqueeze(-1)
            mean = model.posterior(X.reshape(-1, X.shape[-1])).mean.reshape(len(grid), len(background), -1)
            ranges.append((mean.amax(dim=0) - mean.amin(dim=0)).mean())
    spread = torch.stack(ranges).to(torch.double)
    total = spread.sum()
    return spread / total if total > 0 else torch.full_like(spread, 1.0 / len(spread))
