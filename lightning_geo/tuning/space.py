"""Search spaces: ``Float``, ``Int``, ``Categorical``, fixed values, conditions and constraints.

A [`SearchSpace`][lightning_geo.tuning.SearchSpace] maps a configuration (``{"lr": 3e-4, "layers": 4, "act": "gelu"}``)
to one row of an ``n x d`` tensor the Gaussian process works on, and back:

- ``Float``/``Int`` become one column in ``[0, 1]`` (on a log scale with ``log=True``); an ``Int`` is
  rounded when decoded, and encoding a decoded value puts it on the exact grid point, so the GP sees
  where a trial really was.
- ``Categorical`` becomes one column holding the choice's index ``0 .. k-1``; the optimizer gives these
  columns a categorical kernel (``cat_dims``).
- A fixed value (any plain Python value in the mapping) has no column; it is added to every config.

Conditions: ``Float(1e-3, 1.0, when={"optimizer": "sgd"})`` is part of a config only when the config's
``optimizer`` is ``"sgd"`` (or one of several values, given as a list); otherwise its column is set to a
neutral value (0.5, or the first category) so that the GP does not read meaning into it. Constraints:
``SearchSpace(..., constraints=[lambda c: c["n_embd"] % c["n_head"] == 0])`` rejects configs for which a
callable returns ``False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lightning_geo.utils.checks import check_bool

Config = dict[str, Any]
"""One point of a search space: parameter name -> value (fixed values included)."""


def _check_when(when: Mapping[str, Any] | None) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, Mapping) or not when:
        raise TypeError(f"when={when!r} must be a non-empty mapping of parameter name -> value(s)")
    return {
        key: tuple(value) if isinstance(value, list | tuple | set | frozenset) else (value,)
        for key, value in when.items()
    }


@dataclass(frozen=True)
class _Dimension:
    when: Mapping[str, Any] | None = field(default=None, kw_only=True)

    def active(self, config: Mapping[str, Any]) -> bool:
        """Whether this parameter takes part in ``config`` (its ``when`` condition holds)."""
        return all(config.get(key, _MISSING) in values for key, values in _check_when(self.when).items())


_MISSING = object()


@dataclass(frozen=True)
class Float(_Dimension):
    """A real-valued parameter in ``[low, high]``.

    Args:
        low: Smallest value (inclusive).
        high: Largest value (inclusive); must be greater than ``low``.
        log: Search on a log scale (``low`` must then be positive); the right choice for learning rates,
            weight decay and other scale parameters. Default ``False``.
        when: Optional condition ``{other_parameter: value or [values]}``; see the module docstring.
    """

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self, float)

    def to_unit(self, value: Any) -> float:
        """Map a value to ``[0, 1]``."""
        return _to_unit(self, float(value))

    def from_unit(self, u: float) -> float:
        """Map ``u`` in ``[0, 1]`` to a value."""
        return _from_unit(self, u)


@dataclass(frozen=True)
class Int(_Dimension):
    """An integer parameter in ``[low, high]`` (both inclusive).

    Args:
        low: Smallest value.
        high: Largest value; must be greater than ``low``.
        log: Search on a log scale (``low`` must then be positive), e.g. for widths 16..1024. Default ``False``.
        when: Optional condition ``{other_parameter: value or [values]}``.
    """

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _check_range(self, int)

    def to_unit(self, value: Any) -> float:
        """Map a value to ``[0, 1]``."""
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value!r} is not an integer")
        return _to_unit(self, float(value))

    def from_unit(self, u: float) -> int:
        """Map ``u`` in ``[0, 1]`` to the nearest integer of the range (rounded on the search scale)."""
        return min(self.high, max(self.low, round(_from_unit(self, u))))


@dataclass(frozen=True)
class Categorical(_Dimension):
    """A choice among unordered values (strings, numbers, booleans, ``None``).

    Args:
        choices: At least two distinct values; a one-value "choice" is a fixed value, pass that instead.
        when: Optional condition ``{other_parameter: value or [values]}``.
    """

    choices: Sequence[Any]

    def __post_init__(self) -> None:
        if isinstance(self.choices, str) or not isinstance(self.choices, Sequence):
            raise TypeError(f"choices={self.choices!r} must be a list or tuple of values")
        if len(self.choices) < 2:
            raise ValueError(f"choices={list(self.choices)!r} needs at least two values (pass a fixed value instead)")
        if len({repr(c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"choices={list(self.choices)!r} has repeated values")
        object.__setattr__(self, "choices", tuple(self.choices))

    def index(self, value: Any) -> int:
        """The position of ``value`` among the choices."""
        for i, choice in enumerate(self.choices):
            if choice == value and type(choice) is type(value):
                return i
        for i, choice in enumerate(self.choices):  # 3 == 3.0 after a JSON round trip
            if choice == value:
                return i
        raise ValueError(f"{value!r} is not one of the choices {list(self.choices)!r}")


Dimension = Float | Int | Categorical


def _check_range(dim: Float | Int, kind: type) -> None:
    name = type(dim).__name__
    for bound in ("low", "high"):
        value = getattr(dim, bound)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise TypeError(f"{name}: {bound}={value!r} must be a finite number")
        if kind is int and not float(value).is_integer():
            raise TypeError(f"{name}: {bound}={value!r} must be an integer")
    if not dim.low < dim.high:
        raise ValueError(f"{name}: low ({dim.low}) must be smaller than high ({dim.high})")
    check_bool(name, "log", dim.log)
    if dim.log and dim.low <= 0:
        raise ValueError(f"{name}: log=True needs a positive low, got low={dim.low}")
    object.__setattr__(dim, "low", kind(dim.low))
    object.__setattr__(dim, "high", kind(dim.high))


def _to_unit(dim: Float | Int, value: float) -> float:
    slack = 1e-9 * (dim.high - dim.low)  # a value that went through exp/log or JSON may miss a bound by an ulp
    if not dim.low - slack <= value <= dim.high + slack:
        raise ValueError(f"{value!r} is outside [{dim.low}, {dim.high}]")
    value = min(dim.high, max(dim.low, value))
    if dim.log:
        return (math.log(value) - math.log(dim.low)) / (math.log(dim.high) - math.log(dim.low))
    return (value - dim.low) / (dim.high - dim.low)


def _from_unit(dim: Float | Int, u: float) -> float:
    u = min(1.0, max(0.0, float(u)))
    if dim.log:
        value = math.exp(math.log(dim.low) + u * (math.log(dim.high) - math.log(dim.low)))
    else:
        value = dim.low + u * (dim.high - dim.low)
    return min(dim.high, max(dim.low, value))


class SearchSpace(Mapping[str, Any]):
    """The parameters a study searches over, and their encoding for the Gaussian process.

    Args:
        parameters: ``{name: Float(...) | Int(...) | Categorical(...) | fixed value}``. Names are strings;
            a fixed value (any other object) is passed to every trial unchanged.
        constraints: Callables ``config -> bool``; configs for which one returns ``False`` are never
            proposed. Default: none.

    Raises:
        ValueError: if there is nothing to search, or a ``when`` condition names an unknown parameter or a
            value that parameter cannot take.
        TypeError: for a non-string name or a constraint that is not callable.

    Example:
        ```python
        space = SearchSpace({"lr": Float(1e-5, 1e-1, log=True), "layers": Int(1, 6),
                             "act": Categorical(["relu", "gelu"]), "epochs": 3})
        X = space.encode([{"lr": 1e-3, "layers": 2, "act": "gelu", "epochs": 3}])  # 1 x 3, in [0, 1] / indices
        ```
    """

    def __init__(
        self, parameters: Mapping[str, Any], *, constraints: Sequence[Callable[[Config], bool]] = ()
    ) -> None:
        if not isinstance(parameters, Mapping):
            raise TypeError(f"parameters must be a mapping of name -> dimension, got {type(parameters).__name__}")
        for name in parameters:
            if not isinstance(name, str) or not name:
                raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
        self._parameters = dict(parameters)
        self.dimensions: dict[str, Dimension] = {
            k: v for k, v in self._parameters.items() if isinstance(v, Float | Int | Categorical)
        }
        self.fixed: dict[str, Any] = {k: v for k, v in self._parameters.items() if k not in self.dimensions}
        if not self.dimensions:
            raise ValueError("the search space has no Float, Int or Categorical parameter: nothing to search")
        for name, dim in self.dimensions.items():
            for key, values in _check_when(dim.when).items():
                self._check_condition(name, key, values)
        for constraint in constraints:
            if not callable(constraint):
                raise TypeError(f"constraints must be callables config -> bool, got {constraint!r}")
        self.constraints = tuple(constraints)
        self.names: tuple[str, ...] = tuple(self.dimensions)
        self.cat_dims: list[int] = [i for i, d in enumerate(self.dimensions.values()) if isinstance(d, Categorical)]
        self.int_dims: list[int] = [i for i, d in enumerate(self.dimensions.values()) if isinstance(d, Int)]

    def _check_condition(self, name: str, key: str, values: tuple[Any, ...]) -> None:
        if key == name or key not in self._parameters:
            raise ValueError(f"{name}: when= names {key!r}, which is not another parameter of the space")
        other = self._parameters[key]
        for value in values:
            if isinstance(other, Categorical):
                other.index(value)  # raises for a value the other parameter cannot take
            elif isinstance(other, Float | Int):
                raise ValueError(f"{name}: when= may only test Categorical or fixed parameters, not {key!r}")

    # Mapping protocol: the space reads like the dict it was built from.
    def __getitem__(self, name: str) -> Any:
        return self._parameters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parameters)

    def __len__(self) -> int:
        return len(self._parameters)

    def __repr__(self) -> str:
        return f"SearchSpace({self._parameters!r})"

    @property
    def d(self) -> int:
        """Number of encoded columns (searched parameters)."""
        return len(self.dimensions)

    @property
    def num_categories(self) -> list[int]:
        """For each encoded column, the number of categories (0 for ``Float``/``Int`` columns)."""
        return [len(d.choices) if isinstance(d, Categorical) else 0 for d in self.dimensions.values()]

    def describe(self) -> dict[str, str]:
        """``{name: repr}`` of every parameter: stored with a study to detect a changed space on resume."""
        return {name: repr(value) for name, value in self._parameters.items()}

    def encode(self, configs: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Encode configs as an ``n x d`` double tensor (unit-cube columns and category indices).

        Raises:
            ValueError: for a missing parameter or a value outside its range or choices.
        """
        rows = []
        for config in configs:
            row = []
            for name, dim in self.dimensions.items():
                if not dim.active(config):
                    row.append(0.0 if isinstance(dim, Categorical) else 0.5)
                    continue
                if name not in config:
                    raise ValueError(f"config {dict(config)!r} has no value for {name!r}")
                try:
                    value = config[name]
                    row.append(float(dim.index(value)) if isinstance(dim, Categorical) else dim.to_unit(value))
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{name}: {err}") from None
            rows.append(row)
        return torch.tensor(rows, dtype=torch.double).reshape(len(rows), self.d)

    def decode(self, X: torch.Tensor) -> list[Config]:
        """Decode an ``n x d`` tensor into configs (rounding integers and category indices; fixed values added,
        inactive conditional parameters left out)."""
        configs = []
        for row in X.detach().to(torch.double).reshape(-1, self.d).tolist():
            config: Config = dict(self.fixed)
            for (name, dim), u in zip(self.dimensions.items(), row, strict=True):
                if isinstance(dim, Categorical):
                    config[name] = dim.choices[min(len(dim.choices) - 1, max(0, round(u)))]
                else:
                    config[name] = dim.from_unit(u)
            for name, dim in self.dimensions.items():
                if not dim.active(config):
                    del config[name]
            configs.append(config)
        return configs

    def snap(self, X: torch.Tensor) -> torch.Tensor:
        """Move encoded rows onto the points they decode to: integers onto their grid, category columns onto
        an index, inactive conditional parameters onto their neutral value. Equals ``encode(decode(X))``,
        vectorised for the thousands of candidates of one ``ask``."""
        X = X.detach().to(torch.double).reshape(-1, self.d).clone()
        for i, dim in enumerate(self.dimensions.values()):
            if not isinstance(dim, Categorical):
                X[:, i] = X[:, i].clamp(0.0, 1.0)
            if isinstance(dim, Categorical):
                X[:, i] = X[:, i].round().clamp(0, len(dim.choices) - 1)
            elif isinstance(dim, Int):
                if dim.log:
                    lo, hi = math.log(dim.low), math.log(dim.high)
                    values = torch.exp(lo + X[:, i] * (hi - lo)).round().clamp(dim.low, dim.high)
                    X[:, i] = (values.log() - lo) / (hi - lo)
                else:
                    values = (dim.low + X[:, i] * (dim.high - dim.low)).round().clamp(dim.low, dim.high)
                    X[:, i] = (values - dim.low) / (dim.high - dim.low)
        if any(dim.when for dim in self.dimensions.values()):
            X = self.encode(self.decode(X))
        return X

    def feasible(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` satisfies every constraint (a constraint that raises counts as ``False``)."""
        for constraint in self.constraints:
            try:
                if not constraint(dict(config)):
                    return False
            except Exception:
                return False
        return True

    @staticmethod
    def row_key(row: Sequence[float]) -> tuple[float, ...]:
        """A hashable key of an encoded row, equal for rows the space cannot tell apart (spots duplicates)."""
        return tuple(round(float(v), 9) for v in row)

    def key(self, config: Mapping[str, Any]) -> tuple[float, ...]:
        """[`row_key`][lightning_geo.tuning.SearchSpace.row_key] of a config's encoding."""
        return self.row_key(self.encode([config])[0].tolist())

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> SearchSpace:
        """Build a space from plain data, as in a YAML config file.

        Each entry is ``{"float": [low, high], "log": bool}``, ``{"int": [low, high], "log": bool}``,
        ``{"categorical": [choices...]}`` (each optionally with ``"when": {...}``) or a plain value (fixed).

        Example:
            ```python
            SearchSpace.from_dict({"lr": {"float": [1e-4, 1e-1], "log": True}, "act": {"categorical": ["relu", "gelu"]},
                                   "epochs": 3})
            ```
        """
        parameters: dict[str, Any] = {}
        kinds = {"float": Float, "int": Int, "categorical": Categorical}
        for name, entry in spec.items():
            if not isinstance(entry, Mapping):
                parameters[name] = entry
                continue
            found = [k for k in kinds if k in entry]
            unknown = set(entry) - set(kinds) - {"log", "when"}
            if len(found) != 1 or unknown:
                raise ValueError(
                    f"{name}: expected exactly one of 'float', 'int', 'categorical' (plus optional 'log', 'when'), "
                    f"got keys {sorted(entry)}"
                )
            kind = found[0]
            extra = {"when": entry["when"]} if "when" in entry else {}
            if "log" in entry and not isinstance(entry["log"], bool):
                raise ValueError(f"{name}: log must be true or false, got {entry['log']!r}")
            try:
                if kind == "categorical":
                    parameters[name] = Categorical(entry[kind], **extra)
                    continue
                bounds = entry[kind]
                if not isinstance(bounds, Sequence) or isinstance(bounds, str) or len(bounds) != 2:
                    raise ValueError(f"{kind} needs [low, high], got {bounds!r}")
                parameters[name] = kinds[kind](bounds[0], bounds[1], log=bool(entry.get("log", False)), **extra)
            except (ValueError, TypeError) as err:  # the dimension's own message, with the entry it is about
                raise type(err)(f"{name}: {err}") from None
        return cls(parameters)


def as_space(space: Any) -> SearchSpace:
    """``space`` as a [`SearchSpace`][lightning_geo.tuning.SearchSpace]: a mapping ``{name: Float(...) | Int(...) |
    Categorical(...) | fixed value}`` is wrapped in one.

    Raises:
        TypeError: naming ``space`` for anything else.
    """
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, Mapping):
        raise TypeError(f"space={space!r} must be a SearchSpace or a mapping of name -> Float(...), Int(...), "
                        "Categorical(...) or fixed value")
    return SearchSpace(space)
