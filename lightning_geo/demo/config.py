"""Settings of the demo run, kept free of heavy imports so that ``lightning-geo --help`` answers at once."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

PRECISIONS: tuple[str, ...] = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
"""Precision strings the demo accepts (Lightning's own names)."""


CURRICULUM_IN_DEMO = "curriculum: DynamicCurriculum(mode='seq_len', pacing='linear'), sequence-length warmup"
SPARSITY_IN_DEMO = "sparsity: SparsityAwareLR"

GEO_PARTS_IN_DEMO: tuple[str, ...] = (
    "strategy: geo_hybrid (its plan for --devices; one device: a plain single-device run)",
    "precision: 16-mixed with PredictiveScalingPrecision on a GPU; Lightning's bf16-mixed on a CPU (no loss scale "
    "to predict)",
    CURRICULUM_IN_DEMO,
    SPARSITY_IN_DEMO,
)
"""What ``--geo`` (``lightning_geo.recipe()``) adds to the plain Lightning run, one entry per GEO part (the tuner
runs many Trainers: ``tune``)."""

DEMO_BUDGET = "30s"
"""The demo's budget per arm: seconds in training batches (``make demo`` runs two arms within 3 minutes)."""

DEMO_LEARNING_RATES: dict[str, float] = {"plain": 0.00394, "geo": 0.0085}
"""Each arm's peak learning rate on the demo's BPE model and budget. Plain's is the best of 10 trials with the same
budget (see ``docs/demo.md`` for the command and the trials). GEO's is below its tuning's best (0.0131, whose
neighbours at 0.0076-0.015 ended within 0.02 nats of it): at 0.0131, peaking at 26% of the budget, the full-length
batches that the sequence-length warmup brings at 30% met the peak rate, and on a slower machine (fewer steps by
then) the validation loss stalled or spiked once they came. At 0.0085 with a 35% warmup, on a 60-step budget, it
fell at every validation, to 5.34 nats against 5.78 at 0.0131."""

DEMO_WARMUP_SHARES: dict[str, float] = {"plain": 0.211, "geo": 0.35}
"""Each arm's LR warmup, a share of the budget (see ``DEMO_LEARNING_RATES``). GEO's ends after its sequences reach
full length (``seq_len_warmup``, 30% of the budget), so that full-length batches start below the peak rate."""

DEMO_VAL_POINTS = 10
"""Validations over a demo budget (they cost no budget: see ``demo.budget``)."""

DEMO_VAL_SAMPLES = 128
"""Validation windows of the demo (128 x 128 tokens)."""

TOKENIZERS: tuple[str, ...] = ("bpe", "char")
"""``bpe``: a byte-level BPE learned on the corpus (``vocab_size`` tokens); ``char``: one id per character."""

MIXED_PRECISIONS: tuple[str, ...] = ("16-mixed", "bf16-mixed")
"""Precisions under which ``--geo`` trains with ``PredictiveScalingPrecision``."""

GEO_DEFAULT_PRECISION = "16-mixed"
"""The precision of ``--geo`` and ``--compare`` runs on a GPU when ``--precision`` is not given."""

GEO_DEFAULT_CPU_PRECISION = "bf16-mixed"
"""Their precision on a CPU with bf16 instructions (``lightning_geo.utils.cpu_precision``): most CPUs emulate fp16
matrix products (65x slower than fp32 on a 2-core Xeon, the demo 16x slower), while bf16 runs at fp32's speed or
better where the CPU has bf16 instructions. On a CPU without them bf16 is emulated too (a demo step 12x the CPU
time of fp32 on an AVX2-only AMD EPYC), and the runs train in ``32-true``. ``--precision`` overrides both."""


def accelerator_device_type(accelerator: str) -> str:
    """The torch device type a Lightning accelerator name trains on: ``"cuda"`` for ``"gpu"``/``"cuda"``, and for
    ``"auto"`` when CUDA is available (else ``"cpu"``); any other name as it is (``"cpu"``, ``"mps"``)."""
    if accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if accelerator == "gpu" else accelerator


def default_mixed_precision(accelerator: str) -> str:
    """The precision ``--geo`` trains in when none is given: 16-mixed on a GPU, bf16-mixed on a CPU with bf16
    instructions, 32-true on a CPU without them (where mixed precision is emulated, slower than fp32).

    Args:
        accelerator: Lightning's accelerator name (``"cpu"``, ``"gpu"``, ``"cuda"`` or ``"auto"``: a GPU when
            CUDA is available).
    """
    on_gpu = accelerator_device_type(accelerator) == "cuda"
    if on_gpu:
        return GEO_DEFAULT_PRECISION
    from lightning_geo.utils.cpu_precision import cpu_has_native_bf16

    return GEO_DEFAULT_CPU_PRECISION if cpu_has_native_bf16() else "32-true"


def geo_parts_used(config: DemoConfig, plan: str | None = None, predictive: bool | None = None) -> tuple[str, ...]:
    """The GEO parts a demo run with ``config`` uses, as shown in its summary (empty without ``--geo``).

    Args:
        config: The run's settings.
        plan: The plan ``geo_hybrid`` chose (e.g. ``"DDP"``), when known.
        predictive: Whether the run trained with ``PredictiveScalingPrecision``; default: as ``recipe()`` decides
            (in 16-mixed only).
    """
    if not config.geo:
        return ()
    predictive = config.resolved_precision == "16-mixed" if predictive is None else predictive
    if predictive:
        precision = f"precision: PredictiveScalingPrecision({config.resolved_precision!r})"
    elif config.resolved_precision in MIXED_PRECISIONS:
        precision = (f"precision: Lightning's {config.resolved_precision} (bf16 has no loss scale to predict; "
                     "PredictiveScalingPrecision acts in 16-mixed)")
    elif config.resolved_precision == "32-true" and default_mixed_precision(config.accelerator) == "32-true":
        precision = ("precision: not used at --precision 32-true, the default on this CPU: it has no bf16 "
                     "instructions, and emulated mixed precision would be slower than fp32")
    else:
        precision = (f"precision: not used at --precision {config.resolved_precision} "
                     "(it needs 16-mixed or bf16-mixed)")
    strategy = f"strategy: geo_hybrid ({plan or 'plan made at set-up'} on {config.devices} device(s))"
    parts = {"strategy": strategy, "precision": precision, "seq_len_warmup": CURRICULUM_IN_DEMO,
             "sparsity": SPARSITY_IN_DEMO}
    return tuple(text for name, text in parts.items() if name not in config.exclude)


@dataclass
class DemoConfig:
    """Everything the demo run takes; the command-line flags map one-to-one onto these fields."""

    corpus: str | None = None  # text file or folder; None: the Python standard library's sources
    steps: int = 300  # optimizer steps (the budget); 65-80 s of training on 2 CPU cores with the defaults
    max_minutes: float = 1.25  # wall-clock cap on fitting; the run stops early (and says so) if reached
    batch_size: int = 32  # samples per device and step
    seq_len: int = 128  # characters per sample
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads
    n_embd: int = 128  # model width
    lr: float = 3e-3  # peak AdamW learning rate
    geo_lr: float | None = None  # the GEO arm's peak learning rate in a comparison (None: lr)
    geo_warmup_share: float | None = None  # the GEO arm's warmup_share in a comparison (None: warmup_share)
    warmup_steps: int | None = None  # LR warmup; None: 10% of the steps, at most 100
    grad_clip: float = 1.0  # gradient-norm clipping threshold
    precision: str | None = None  # one of PRECISIONS; None: see resolved_precision
    accelerator: str = "auto"  # Lightning accelerator ("cpu", "gpu", "auto")
    devices: int = 1  # devices (processes) to train on; >1 runs DDP
    val_every: int = 75  # validate every this many steps (and always at the end)
    val_samples: int = 256  # validation windows, spread evenly over the held-out files
    out: str = "runs"  # TensorBoard root folder
    name: str = "demo"  # run name: logs go to <out>/<name>/version_N
    seed: int = 0  # seeds model init and data order
    progress_bar: bool = True  # Lightning's progress bar
    sample_chars: int = 160  # characters to sample from the trained model for the summary (0: none)
    geo: bool = False  # train with lightning_geo.recipe() (see GEO_PARTS_IN_DEMO)
    tokenizer: str = "char"  # one of TOKENIZERS
    vocab_size: int = 4096  # BPE vocabulary size (tokenizer="bpe")
    max_train_chars: int | None = 12_000_000  # BPE: characters of training text encoded (None: all of it)
    budget: str | None = None  # "60s", "2M" tokens, "300 steps": replaces `steps`/`max_minutes` (see demo.budget)
    warmup_share: float = 0.05  # with a budget: LR warmup as a share of it
    seq_len_warmup: float = 0.3  # with geo: share of the budget (or steps) over which sequences grow (recipe's)
    val_points: int = 12  # with a budget: validations spread over it, the last at its end
    exclude: tuple[str, ...] = ()  # with geo: recipe parts to leave out (lightning_geo.recipes.RECIPE_PARTS)

    @property
    def resolved_precision(self) -> str:
        """The precision the run trains in: ``precision``; by default, with ``geo``,
        ``default_mixed_precision`` (16-mixed on a GPU, bf16-mixed on a CPU), else ``32-true``."""
        if self.precision is not None:
            return self.precision
        return default_mixed_precision(self.accelerator) if self.geo else "32-true"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "n_layer", "n_head", "n_embd", "devices", "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.val_samples < 1:
            raise ValueError(f"val_samples must be a positive integer, got {self.val_samples!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not (self.max_minutes > 0 and math.isfinite(self.max_minutes)):
            raise ValueError(f"max_minutes must be a positive number, got {self.max_minutes!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive, got {self.grad_clip!r}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {', '.join(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.budget is not None:
            from lightning_geo.demo.budget import Budget

            Budget.parse(self.budget)  # a bad budget fails here, naming itself
        if not 0.0 <= self.warmup_share < 1.0:
            raise ValueError(f"warmup_share must be in [0, 1), got {self.warmup_share!r}")
        if not 0.0 < self.seq_len_warmup <= 1.0:
            raise ValueError(f"seq_len_warmup must be in (0, 1], got {self.seq_len_warmup!r}")
        if self.val_points < 1:
            raise ValueError(f"val_points must be a positive integer, got {self.val_points!r}")
        if self.sample_chars < 0:
            raise ValueError(f"sample_chars must be >= 0, got {self.sample_chars!r}")
        check_out_folder(self.out)


def check_out_folder(out: str) -> None:
    """Fail early, in one line naming ``--out``, when the run could not write its logs under ``out``.

    An existing folder must be writable; a missing one must be creatable: its nearest existing parent is probed by
    creating and removing a temporary folder in it (nothing is left behind, and nothing is created for ``out``).

    Args:
        out: The TensorBoard root folder (``DemoConfig.out``, the ``--out`` flag).

    Raises:
        ValueError: naming ``--out`` and why, e.g. for ``/proc/nope`` or a path through a file.
    """
    problem = _folder_problem(Path(out).expanduser())
    if problem is not None:
        raise ValueError(f"--out {out!r}: cannot write the run's logs there: {problem}")


def check_output_file(path: str, *, flag: str, what: str) -> None:
    """Fail early, in one line naming ``flag``, when ``what`` could not be written to the file ``path`` later.

    The file may exist (then it must be a writable file); its folder is checked as ``check_out_folder`` checks
    ``--out``: it must be writable, or creatable (the writer then creates it).

    Args:
        path: The file to write, e.g. ``--summary-json``'s.
        flag: The command-line flag that gave it, for the message.
        what: What will be written, for the message (``"the summary"``).

    Raises:
        ValueError: naming ``flag`` and why, e.g. for ``/proc/nope/summary.json`` or a folder.

    Example:
        ``check_output_file(args.output, flag="--output", what="the scores")`` before scoring.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        problem: str | None = "it is a folder; give a file name"
    elif file.exists() and not os.access(file, os.W_OK):
        problem = "the file is not writable"
    else:
        problem = _folder_problem(file.absolute().parent)
    if problem is not None:
        raise ValueError(f"{flag} {path!r}: cannot write {what} there: {problem}")


def _folder_problem(path: Path) -> str | None:
    """Why no file could be written in the folder ``path`` (created if missing), or ``None`` if one could.

    An existing folder must be writable; for a missing one its nearest existing parent is probed by creating and
    removing a temporary folder in it (nothing is left behind, and nothing is created for ``path``).
    """
    if path.exists():
        if not path.is_dir():
            return "it is not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return "the folder is not writable"
        return None
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"{str(parent)!r} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".lightning_geo_probe_", dir=parent))
    except OSError as err:
        return f"no folder can be created in {str(parent)!r} ({err.strerror or err})"
    return None
