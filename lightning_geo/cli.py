"""The ``lightning-geo`` command line (also ``python -m lightning_geo``).

Sub-commands:
    demo   train a small character-level GPT on a real corpus and summarise the run
    tune   Bayesian hyperparameter search (GeoTuner) over the demo model, or over your own from a YAML file
    topo   the GPU topology (detected, or a saved ``nvidia-smi topo -m``) and the ranked parallel plans
    predict
           score a folder of text files with a trained demo model checkpoint (length-bucketed ``trainer.predict``)
    fit, validate, test
           the demo model through LightningCLI, from YAML configs (``examples/``) and ``--key value`` flags

Bad input (a missing or empty corpus, a binary file, a non-positive budget, an unknown precision)
ends with a one-line ``lightning-geo demo: error: ...`` message and exit status 2, not a traceback. A study
whose trials all fail (or fail too often in a row) ends ``lightning-geo tune`` with one line and exit status 1.
"""

from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from lightning_geo import __version__
from lightning_geo.demo.config import (
    DEMO_BUDGET,
    DEMO_LEARNING_RATES,
    DEMO_VAL_POINTS,
    DEMO_VAL_SAMPLES,
    DEMO_WARMUP_SHARES,
    GEO_PARTS_IN_DEMO,
    MIXED_PRECISIONS,
    PRECISIONS,
    TOKENIZERS,
    DemoConfig,
    check_output_file,
)

if TYPE_CHECKING:
    from lightning_geo.strategies.topology import NodeTopology
    from lightning_geo.tuning.executors import TrainFn

_DEFAULTS = {f.name: f.default for f in fields(DemoConfig)}
LIGHTNING_CLI_COMMANDS: tuple[str, ...] = ("fit", "validate", "test")
"""Sub-commands handed to the demo's LightningCLI (``lightning_geo.demo.lightning_cli``)."""


def _positive(kind: Callable[[str], int | float], allow_zero: bool = False) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not (value >= 0 if allow_zero else value > 0):  # also rejects nan (and -inf)
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if allow_zero else 'positive'}, got {text}")
        if not math.isfinite(value):  # float() takes "inf"
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        return value

    parse.__name__ = f"{'non-negative' if allow_zero else 'positive'} {kind.__name__}"
    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "(default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def _precision(text: str) -> str:
    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"unknown precision {text!r}; choose one of {', '.join(PRECISIONS)}")
    return text


_ACCELERATOR_DEVICES = {
    "gpu": "CUDA device", "cuda": "CUDA device", "mps": "Apple MPS device", "tpu": "TPU (torch_xla)",
}
"""The device each Lightning accelerator name needs, for the message when it is missing."""


def _accelerator(text: str) -> str:
    """A Lightning accelerator name that works on this machine, checked as the flag is parsed (before any work)."""
    if text in ("auto", "cpu"):
        return text
    from lightning.pytorch.accelerators import AcceleratorRegistry, CUDAAccelerator, MPSAccelerator

    usable = ["auto", *(name for name in sorted(AcceleratorRegistry)
                        if AcceleratorRegistry[name]["accelerator"].is_available())]
    if CUDAAccelerator.is_available() or MPSAccelerator.is_available():
        usable.append("gpu")  # Lightning's "gpu": CUDA, or MPS on Apple silicon
    if text in usable:
        return text
    problem = (f"no {_ACCELERATOR_DEVICES[text]} was found for {text!r}" if text in _ACCELERATOR_DEVICES
               else f"unknown accelerator {text!r}")
    raise argparse.ArgumentTypeError(f"{problem}; use one of this machine's: {', '.join(usable)}")


def _add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="train a small GPT-2-shaped LM plain and with lightning_geo.recipe() on the same budget; one table",
        description=(
            "Train a small GPT-style language model on a real corpus (by default this Python's standard library, "
            f"byte-level BPE of {_DEFAULTS['vocab_size']} tokens learned in-process), first with plain Lightning "
            "(AdamW, warmup + cosine LR over the budget, gradient clipping), then with lightning_geo.recipe(), on the "
            f"same wall-clock budget ({DEMO_BUDGET} of training each by default), and print one table: seconds and "
            "tokens to plain's final validation loss, final loss, tokens/s, peak memory, skipped steps; plus a PNG of "
            "both validation curves against seconds and tokens. --arm plain|geo trains one arm. Each arm's learning "
            "rate defaults to the value tuned for it with the same budget (see docs/demo.md). "
            "View with: tensorboard --logdir runs"
        ),
        formatter_class=_HelpFormatter,
    )
    pos_int, pos_float = _positive(int), _positive(float)
    add = demo.add_argument
    add(
        "--corpus",
        metavar="PATH",
        default=None,
        help="a UTF-8 text file or a folder of text files (default: the Python standard library's sources)",
    )
    add("--arm", choices=("both", "plain", "geo"), default=None,
        help="both (default: plain Lightning, then lightning_geo.recipe(), one table), plain or geo (one run)")
    add("--budget", default=None,
        help=f"what each arm may spend: '60s', '2 min' (seconds in training batches), '2M' / '500k tokens', or "
        f"'300 steps' (default: {DEMO_BUDGET}; with --steps, that many steps)")
    add("--tokenizer", choices=TOKENIZERS, default="bpe",
        help="bpe: byte-level BPE learned on the corpus (cached); char: one id per character (the old demo)")
    add("--vocab-size", type=pos_int, default=_DEFAULTS["vocab_size"], help="BPE vocabulary size")
    add("--max-train-chars", type=_positive(int, allow_zero=True), default=_DEFAULTS["max_train_chars"],
        help="BPE: characters of training text to encode (whole files, fixed shuffled order); 0: all of it")
    add("--steps", type=pos_int, default=None,
        help="train for this many optimizer steps instead of a budget (Lightning validates every --val-every)")
    add("--max-minutes", type=pos_float, default=_DEFAULTS["max_minutes"], help="with --steps: wall-clock cap")
    add("--batch-size", type=pos_int, default=_DEFAULTS["batch_size"], help="samples per device and step")
    add("--seq-len", type=pos_int, default=_DEFAULTS["seq_len"], help="tokens per sample")
    add("--n-layer", type=pos_int, default=_DEFAULTS["n_layer"], help="transformer blocks")
    add("--n-head", type=pos_int, default=_DEFAULTS["n_head"], help="attention heads")
    add("--n-embd", type=pos_int, default=_DEFAULTS["n_embd"], help="model width")
    add("--lr", type=pos_float, default=None,
        help=f"peak AdamW learning rate of the plain arm, or of the one arm --arm trains (default: tuned per arm: "
        f"{DEMO_LEARNING_RATES['plain']:g} plain, {DEMO_LEARNING_RATES['geo']:g} GEO; "
        f"{_DEFAULTS['lr']:g} with --tokenizer char)")
    add("--geo-lr", type=pos_float, default=None, help="the GEO arm's learning rate when both arms run "
        f"(default: {DEMO_LEARNING_RATES['geo']:g}; --lr with --tokenizer char)")
    add("--warmup-share", type=_positive(float, allow_zero=True), default=None,
        help=f"with a budget: LR warmup as a share of it, of the plain arm or of the one arm --arm trains (default: "
        f"tuned per arm: {DEMO_WARMUP_SHARES['plain']:g} plain, {DEMO_WARMUP_SHARES['geo']:g} GEO; "
        f"{_DEFAULTS['warmup_share']:g} with --tokenizer char)")
    add("--geo-warmup-share", type=_positive(float, allow_zero=True), default=None,
        help=f"the GEO arm's warmup share when both arms run (default: {DEMO_WARMUP_SHARES['geo']:g}; --warmup-share "
        "with --tokenizer char)")
    add("--seq-len-warmup", type=pos_float, default=_DEFAULTS["seq_len_warmup"],
        help="GEO arm: share of the budget over which sequences grow to full length")
    add("--exclude", default="", help="GEO arm: recipe parts to leave out, comma-separated "
        "(strategy, precision, seq_len_warmup, sparsity)")
    add("--precision", type=_precision, default=None,
        help=f"one of {', '.join(PRECISIONS)} (default: 16-mixed on a GPU, bf16-mixed on a CPU with bf16 "
        "instructions, where fp16 is emulated and slow, 32-true on one without them; 32-true for a plain single "
        "run with --steps)")
    add("--accelerator", type=_accelerator, default=_DEFAULTS["accelerator"],
        help="Lightning accelerator: cpu, gpu or auto")
    add("--devices", type=pos_int, default=_DEFAULTS["devices"], help="devices (processes); more than 1 runs DDP")
    add("--val-every", type=pos_int, default=None,
        help=f"with --steps: validate every N steps and at the end (default: {_DEFAULTS['val_every']}; 25 for both "
        "arms)")
    add("--val-points", type=pos_int, default=DEMO_VAL_POINTS, help="with a budget: validations over it")
    add("--val-samples", type=pos_int, default=DEMO_VAL_SAMPLES, help="validation windows")
    add("--out", metavar="DIR", default=_DEFAULTS["out"], help="TensorBoard root folder")
    add("--name", default=None, help="run name: logs go to OUT/NAME/version_N (default: demo; compare for both arms)")
    add("--seed", type=int, default=_DEFAULTS["seed"], help="random seed")
    add("--geo", action="store_true", help="the same as --arm geo: " + "; ".join(GEO_PARTS_IN_DEMO))
    add("--compare", action="store_true", help="the same as --arm both")
    add("--sample-chars", type=_positive(int, allow_zero=True), default=None,
        help="tokens to sample from the trained model for a one-arm summary (default: 160; 0: none)")
    add("--summary-json", metavar="FILE", default=None, help="also write the run's summary to FILE as JSON")
    add("--no-progress-bar", dest="progress_bar", action="store_false", help="hide Lightning's progress bar")


def _add_tune_parser(subparsers: argparse._SubParsersAction) -> None:
    tune = subparsers.add_parser(
        "tune",
        help="Bayesian hyperparameter search (GeoTuner) over the demo model or a YAML-configured one",
        description=(
            "Tune the demo character GPT (learning rate, weight decay, warmup, depth, width, batch size) at a "
            "fixed budget of training characters per trial, with BoTorch Bayesian optimisation and pruning of "
            "bad trials; or tune your own LightningModule from a study file (--config). Trials are stored as "
            "they finish: run the same command again to continue an interrupted study. "
            "View with: tensorboard --logdir OUT/NAME"
        ),
        formatter_class=_HelpFormatter,
    )
    pos_int = _positive(int)
    add = tune.add_argument
    add("--config", metavar="FILE", default=None, help="a study file (YAML: space, model, data, trainer); see README")
    add("--trials", type=pos_int, default=None, help="trials in the study (default: 8, or the file's max_trials)")
    add("--tokens", type=pos_int, default=300_000, help="demo: training characters per trial")
    add("--corpus", metavar="PATH", default=None, help="demo: text file or folder (default: Python's stdlib)")
    add("--seq-len", type=pos_int, default=64, help="demo: characters per sample")
    add("--accelerator", type=_accelerator, default="auto", help="demo: Lightning accelerator")
    add("--executor", choices=("in_process", "subprocess"), default=None,
        help="run trials in this process or each in its own (default: in_process, or the file's)")
    add("--parallel", type=pos_int, default=None, help="trials at once (needs --executor subprocess)")
    add("--pruner", choices=("median", "curve", "none"), default=None, help="pruning rule (default: median)")
    add("--out", metavar="DIR", default="runs", help="root folder of the study")
    add("--name", default="tune", help="study name: everything goes to OUT/NAME (re-run to resume)")
    add("--seed", type=int, default=None, help="optimiser seed (default: 0)")
    add("--quiet", action="store_true", help="no line per trial")


def _add_topo_parser(subparsers: argparse._SubParsersAction) -> None:
    topo = subparsers.add_parser(
        "topo",
        help="show the GPU topology as NVLink islands and the ranked parallel plans for a model size",
        description=(
            "Detect this machine's GPU interconnect (NVML, else `nvidia-smi topo -m`) or read a saved "
            "`nvidia-smi topo -m` output (--file), print it as a map of NVLink islands, and rank every "
            "(replicate x shard x tensor) mesh for a model of --params parameters by estimated communication "
            "per step, as strategy='geo_hybrid' would."
        ),
        formatter_class=_HelpFormatter,
    )
    add = topo.add_argument
    add("--file", metavar="PATH", default=None, help="a saved `nvidia-smi topo -m` output instead of detection")
    add("--params", type=_positive(float), default=1.3e9, help="model parameters (7e9 is fine)")
    add("--nodes", type=_positive(int), default=1, help="number of nodes (alike), joined by InfiniBand")
    add("--gpus-per-node", type=_positive(int), default=None, help="use the first N GPUs (default: all)")
    add("--gpu-memory-gb", type=_positive(float), default=None,
        help="GPU memory (default: detected; unknown for --file, then nothing is ruled out)")
    add("--activation-gb", type=_positive(float, allow_zero=True), default=0.0, help="activation memory per GPU, GB")
    add("--bytes-per-param", type=_positive(float), default=16.0,
        help="weights + gradients + optimizer state per parameter (16: fp32 + Adam)")
    add("--net-gbps", type=_positive(float), default=None, help="inter-node bandwidth per GPU, GB/s (default 25)")
    add("--model", choices=_known_model_names(), default=None,
        help="plan for a known model's shape with the memory model, instead of --params and --activation-gb")
    add("--seq-len", type=_positive(int), default=None, help="tokens per sequence (with --model; default its own)")
    add("--micro-batch", type=_positive(int), default=None, help="sequences per GPU and forward (with --model; 1)")
    add("--global-batch", type=_positive(int), default=None,
        help="sequences per optimizer step (with --model): ranks plans by estimated step time")
    add("--max-pipeline", type=_positive(int), default=1,
        help="most pipeline stages to consider (needs --global-batch)")
    add("--tensor-parallel", action="store_true", help="consider tensor-parallel meshes")


def _known_model_names() -> list[str]:
    from lightning_geo.strategies.known_models import KNOWN_MODELS

    return list(KNOWN_MODELS)


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="score a folder of text files with a trained demo model (bits per character), length-bucketed",
        description=(
            "Score every text file under FOLDER with the demo character model in --checkpoint (from 'lightning-geo "
            "fit'): bits per character of each file. The files are cut into pieces of the model's context and run "
            "through trainer.predict with LengthBucketing: pieces of similar length batched under a token budget."
        ),
        formatter_class=_HelpFormatter,
    )
    add = predict.add_argument
    add("folder", metavar="FOLDER", help="a folder of UTF-8 text files (binary and empty files are skipped)")
    add("--checkpoint", metavar="CKPT", required=True,
        help="a demo model checkpoint: a .ckpt file or the folder strategy='geo_hybrid' saves (default: none)")
    add("--max-tokens", type=_positive(int), default=8192, help="padded characters per batch (the token budget)")
    add("--batch-size", type=_positive(int), default=32, help="the DataLoader's batch size before bucketing")
    add("--precision", choices=("32-true", *MIXED_PRECISIONS), default="32-true",
        help="mixed precisions run under GEO's PredictiveScalingPrecision")
    add("--accelerator", type=_accelerator, default="auto", help="Lightning accelerator: cpu, gpu or auto")
    add("--output", metavar="FILE", default=None, help="also write the scores as tab-separated values")


def _add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="serve a trained demo model over HTTP with LitServe and GEO's batching (POST /predict)",
        description=(
            "Serve the demo character model in --checkpoint with LitServe: POST /predict with {\"text\": \"...\"} "
            "answers {\"bits_per_char\": ...}. GEO batches requests of similar length under a token budget, "
            "launches a batch when it is full or waiting longer would miss --target-p95-ms, and answers 503 with "
            "Retry-After when that target cannot be held. Needs the serve extra: pip install 'lightning_geo[serve]'. "
            "Ctrl-C or SIGTERM stops it after answering every accepted request."
        ),
        formatter_class=_HelpFormatter,
    )
    add = serve.add_argument
    add("--checkpoint", metavar="CKPT", required=True,
        help="a character-vocabulary demo checkpoint: a .ckpt file or the folder strategy='geo_hybrid' saves")
    add("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    add("--port", type=_positive(int), default=8000, help="TCP port")
    add("--target-p95-ms", type=_positive(float), default=200.0, help="latency target, arrival to answer")
    add("--max-tokens", type=_positive(int), default=4096, help="padded characters per batch, at most")
    add("--max-queue", type=_positive(int), default=1024, help="requests waiting, at most; more get 503")
    add("--precision", choices=("auto", "32-true", "bf16-mixed", "16-mixed"), default="auto",
        help="auto: bf16-mixed on a CUDA GPU that has it, else float32")
    add("--accelerator", choices=("auto", "cpu", "cuda"), default="auto", help="LitServe accelerator")


class _OneLineErrorParser(argparse.ArgumentParser):
    """Reports a bad argument in one line (with a pointer to ``--help``) instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``lightning-geo`` argument parser with one sub-parser per sub-command."""
    parser = _OneLineErrorParser(
        prog="lightning-geo",
        description="lightning_geo (GEO): make Lightning training of generative models cheaper and steadier.",
        epilog=f"{', '.join(LIGHTNING_CLI_COMMANDS)}: the demo through LightningCLI from YAML, e.g. "
        "'lightning-geo fit --config examples/demo_geo.yaml' (see 'lightning-geo fit --help')",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo_parser(subparsers)
    _add_tune_parser(subparsers)
    _add_topo_parser(subparsers)
    _add_predict_parser(subparsers)
    _add_serve_parser(subparsers)
    return parser


def _fail(message: object, command: str = "demo") -> int:
    print(f"lightning-geo {command}: error: {message}", file=sys.stderr)
    return 2


def _demo_arm(args: argparse.Namespace) -> str:
    """``both``, ``plain`` or ``geo``: ``--compare`` and ``--geo`` are the old spellings of ``--arm both|geo``.

    Raises:
        ValueError: naming the flags, when they ask for different arms (``--arm plain --geo``).
    """
    asked = [(f"--arm {args.arm}", args.arm)] if args.arm else []
    asked += [(flag, arm) for flag, arm, given in (("--compare", "both", args.compare), ("--geo", "geo", args.geo))
              if given]
    if len({arm for _, arm in asked}) > 1:
        raise ValueError(f"{' and '.join(flag for flag, _ in asked)} ask for different runs (--geo is --arm geo, "
                         "--compare is --arm both); give one of them")
    return asked[0][1] if asked else "both"


def demo_config_from_args(args: argparse.Namespace) -> DemoConfig:
    """The ``DemoConfig`` of a parsed ``lightning-geo demo`` command line (defaults resolved per arm).

    Raises:
        ValueError: for a bad combination (e.g. an unknown part in ``--exclude``), naming it.
    """
    arm = _demo_arm(args)
    options = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if getattr(args, f.name, None) is not None}
    options.pop("geo", None)
    options["geo"] = arm == "geo"
    if args.steps is None and args.budget is None:
        options["budget"] = DEMO_BUDGET
    if args.steps is not None and args.budget is not None:
        raise ValueError("give either --steps or --budget, not both")
    if args.n_embd % args.n_head:
        below = next(d for d in range(args.n_head - 1, 0, -1) if args.n_embd % d == 0)  # 1 divides
        above = next((d for d in range(args.n_head + 1, args.n_embd + 1) if args.n_embd % d == 0), None)
        near = f"{below} or {above}" if above else str(below)
        raise ValueError(f"--n-head {args.n_head} does not divide --n-embd {args.n_embd} (each head gets "
                         f"n_embd / n_head dimensions); give a --n-head that does, e.g. {near}, or another --n-embd")
    if args.summary_json:
        check_output_file(args.summary_json, flag="--summary-json", what="the summary")
    if args.max_train_chars == 0:
        options["max_train_chars"] = None
    tuned = args.tokenizer == "bpe"
    if args.lr is None:
        options["lr"] = DEMO_LEARNING_RATES["geo" if arm == "geo" else "plain"] if tuned else _DEFAULTS["lr"]
    if args.warmup_share is None:
        options["warmup_share"] = (DEMO_WARMUP_SHARES["geo" if arm == "geo" else "plain"] if tuned
                                   else _DEFAULTS["warmup_share"])
    if arm == "both":
        options["geo_lr"] = args.geo_lr if args.geo_lr is not None else (
            DEMO_LEARNING_RATES["geo"] if tuned else options["lr"])
        options["geo_warmup_share"] = args.geo_warmup_share if args.geo_warmup_share is not None else (
            DEMO_WARMUP_SHARES["geo"] if tuned else options["warmup_share"])
        if args.steps is not None:
            options.setdefault("val_every", 25)
    options["name"] = args.name or ("compare" if arm == "both" else _DEFAULTS["name"])
    options["exclude"] = tuple(part.strip() for part in args.exclude.split(",") if part.strip())
    if options["exclude"]:
        from lightning_geo.recipes import RECIPE_PARTS

        unknown = sorted(set(options["exclude"]) - set(RECIPE_PARTS))
        if unknown:
            raise ValueError(f"--exclude: unknown part(s) {unknown}; the parts are {list(RECIPE_PARTS)}")
    if args.sample_chars is not None:
        options["sample_chars"] = args.sample_chars
    return DemoConfig(**options)


def _demo(args: argparse.Namespace) -> int:
    # Imported here: only `demo` needs the demo modules (the package import already brings Lightning).
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lightning_geo.demo.corpus import CorpusError
    from lightning_geo.demo.data import CharDataModule
    from lightning_geo.demo.run import describe_device, load_demo_corpus, run_demo

    try:
        config = demo_config_from_args(args)
        corpus = load_demo_corpus(config)
        CharDataModule(corpus, seq_len=config.seq_len, batch_size=config.batch_size)  # too little text fails here
    except (ValueError, OSError) as err:  # CorpusError is a ValueError
        return _fail(err)
    unit = "token" if config.tokenizer == "bpe" else "character"
    print(
        f"corpus: {corpus.source}: {len(corpus.train):,} training and {len(corpus.val):,} validation {unit}s "
        f"({corpus.num_train_files} / {corpus.num_val_files} files), vocabulary {corpus.vocab_size}; "
        f"device: {describe_device()}",
        flush=True,
    )
    if _demo_arm(args) == "both":
        return _compare(config)
    try:
        result = run_demo(config, corpus=corpus)
    except (
        CorpusError,
        MisconfigurationException,
    ) as err:  # too little text for a batch; e.g. no GPU for --accelerator gpu
        return _fail(err)
    if result is not None:
        if args.summary_json:
            _write_output(args.summary_json, result.to_json())
        print("\n" + result.table())
        if result.sample:
            print("\nsample from the trained model:\n" + result.sample)
        print(f"\nsee the curves with: tensorboard --logdir {config.out}")
    return 0


def _compare(config: DemoConfig) -> int:
    from lightning_geo.demo.compare import run_compare

    try:
        result = run_compare(config)
    except RuntimeError as err:
        return _fail(err)
    from lightning_geo.demo.budget import Budget

    budget = (str(Budget.parse(config.budget)) if config.budget is not None
              else f"{config.steps} steps, at most {config.max_minutes:g} min")
    geo_lr = config.geo_lr if config.geo_lr is not None else config.lr
    print(f"\nplain Lightning vs lightning_geo.recipe(), same budget ({budget} each), seed {config.seed},\n"
          f"precision {result.geo.precision}, learning rates {config.lr:g} / {geo_lr:g}:\n")
    print(result.table())
    time_speedup, _ = result.speedups()
    if config.budget is not None:
        verdict = (f"GEO reached plain Lightning's final validation loss, and stayed below it, in "
                   f"{1 / time_speedup:.0%} of the time ({time_speedup:.2f}x faster)" if time_speedup else
                   "GEO did not reach plain Lightning's final validation loss within the budget")
        print("\n" + verdict)
    print("GEO parts:", *(textwrap.fill(part, 118, initial_indent="- ", subsequent_indent="  ")
                          for part in result.geo.geo_parts), sep="\n")
    print(f"validation curves (against seconds and tokens): {result.plot_path}")
    print(f"see both runs with: tensorboard --logdir {Path(config.out) / config.name}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from lightning_geo.tuning import GeoTuner, TuningError
    from lightning_geo.tuning.trial import TrialState

    train_fn: TrainFn
    try:
        if args.config:
            from lightning_geo.tuning.config_file import load_study_file

            space, options, train_fn = load_study_file(args.config)
        else:
            from lightning_geo.demo.tune import DEMO_MONITOR, DemoTrainFn, _corpus, demo_search_space

            _corpus(args.corpus)  # a bad corpus fails here, once, not in every trial
            space, options = demo_search_space(), {"monitor": DEMO_MONITOR}
            train_fn = DemoTrainFn(tokens=args.tokens, corpus=args.corpus, seq_len=args.seq_len,
                                   accelerator=args.accelerator)
        flags = {"max_trials": args.trials, "executor": args.executor, "n_parallel": args.parallel, "seed": args.seed,
                 "pruner": None if args.pruner == "none" else args.pruner}
        options.update({k: v for k, v in flags.items() if v is not None or (k == "pruner" and args.pruner)})
        options.setdefault("max_trials", 8)
        tuner = GeoTuner(space, log_dir=args.out, study_name=args.name, verbose=not args.quiet, **options)
    except (ValueError, TypeError, OSError, ImportError) as err:  # ImportError: an Optuna storage without Optuna
        return _fail(err, "tune")
    try:
        best = tuner.search(train_fn)
    except ValueError as err:  # e.g. a storage holding another study
        return _fail(err, "tune")
    except TuningError as err:  # the trials failed: one line, the traceback stays in the storage
        message, _, trace = str(err).partition("\nTraceback")
        where = f" (its traceback is in {tuner.storage.path})" if trace else ""
        _fail(" ".join(message.split()) + where, "tune")
        return 1
    print("\n" + tuner.results_table())
    if tuner.trials and all(t.state is TrialState.FAILED for t in tuner.trials):
        first = min(tuner.trials, key=lambda t: t.number)
        error = " ".join((first.error or "unknown error").partition("\nTraceback")[0].split())
        _fail(f"all {len(tuner.trials)} trials failed; the first (trial {first.number}) with: {error} "
              f"(its traceback is in {tuner.storage.path})", "tune")
        return 1
    if best is not None:
        best_trial = tuner.best_trial
        assert best_trial is not None  # best is its params
        print(f"\nbest {tuner.monitor[0]} = {tuner.best_value:.5g} (trial {best_trial.number}): {best}")
    else:
        print(f"\nPareto front: trials {[t.number for t in tuner.pareto_front()]}")
    print(f"plot: {tuner.plot()}\nsee the study with: tensorboard --logdir {tuner.study_dir}")
    return 0


def _topo(args: argparse.Namespace) -> int:
    from lightning_geo.strategies.bandwidth import Bandwidths
    from lightning_geo.strategies.topo_command import topo_report

    try:
        if args.file:
            from lightning_geo.strategies.topology_smi import read_topology_file

            node = read_topology_file(args.file)
        else:
            node = _detected_or_cpu_topology(args.gpus_per_node)
        bandwidths = Bandwidths() if args.net_gbps is None else Bandwidths(net=args.net_gbps)
        text, _ = topo_report(node, params=args.params, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                              gpu_memory_gb=args.gpu_memory_gb, bandwidths=bandwidths,
                              activation_gb=args.activation_gb, bytes_per_param=args.bytes_per_param,
                              model=args.model, seq_len=args.seq_len, micro_batch=args.micro_batch,
                              global_batch=args.global_batch, max_pipeline=args.max_pipeline,
                              tensor_parallel=args.tensor_parallel)
    except (ValueError, OSError) as err:
        return _fail(err, "topo")
    print(text)
    return 0


def _checkpoint_error(checkpoint: str) -> str | None:
    """Why ``--checkpoint`` cannot be read (missing, truncated, corrupt), or ``None`` when it can."""
    from lightning_geo.strategies.checkpoint import checkpoint_problem, unreadable_message

    if not Path(checkpoint).exists():
        return f"checkpoint {checkpoint!r} does not exist"
    problem = checkpoint_problem(checkpoint)  # a file, or the folder strategy="geo_hybrid" saves
    return None if problem is None else unreadable_message("--checkpoint", checkpoint, problem)


def _predict(args: argparse.Namespace) -> int:
    from lightning_geo.demo.predict import score_folder

    if args.output:
        try:
            check_output_file(args.output, flag="--output", what="the scores")
        except ValueError as err:
            return _fail(err, "predict")
    unreadable = _checkpoint_error(args.checkpoint)
    if unreadable:
        return _fail(unreadable, "predict")
    try:
        result = score_folder(args.checkpoint, args.folder, max_tokens=args.max_tokens, batch_size=args.batch_size,
                              precision=args.precision, accelerator=args.accelerator, name="--checkpoint")
    except (ValueError, OSError, KeyError, RuntimeError) as err:  # not text; not a demo checkpoint
        return _fail(err, "predict")
    print(result.table())
    print(f"\n{result.summary()}")
    if args.output:
        lines = ["file\tcharacters\tbits_per_char"]
        lines += [f"{s.path}\t{s.characters}\t{s.bits_per_char:.6f}" for s in result.scores]
        _write_output(args.output, "\n".join(lines) + "\n")
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from lightning_geo.demo.serve_api import DemoScoringAPI
        from lightning_geo.serving import GeoBatchingLoop, geo_server
    except ImportError:
        return _fail("serving needs LitServe: pip install 'lightning_geo[serve]'", "serve")
    from lightning_geo.demo.predict import load_character_model

    unreadable = _checkpoint_error(args.checkpoint)
    if unreadable:
        return _fail(unreadable, "serve")
    try:
        model = load_character_model(args.checkpoint, name="--checkpoint", command="serve")
    except (ValueError, OSError, KeyError, RuntimeError) as err:
        return _fail(err, "serve")
    loop = GeoBatchingLoop(target_p95_ms=args.target_p95_ms, max_tokens=args.max_tokens, max_queue=args.max_queue,
                           max_length=model.config.seq_len + 1, precision=args.precision)
    server = geo_server(DemoScoringAPI(args.checkpoint), loop=loop, accelerator=args.accelerator, devices=1)
    print(f"lightning-geo serve: POST http://{args.host}:{args.port}/predict with {{\"text\": \"...\"}} "
          f"(at most {model.config.seq_len + 1} characters; p95 target {args.target_p95_ms:g} ms)", flush=True)
    server.run(host=args.host, port=args.port, generate_client_file=False)
    return 0


def _write_output(path: str, text: str) -> None:
    """Write ``text`` to the file of a flag that ``check_output_file`` checked, creating its folder if missing."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def _detected_or_cpu_topology(gpus_per_node: int | None) -> NodeTopology:
    """This machine's GPU topology; without a GPU, the gloo processes ``geo_hybrid`` would run on the CPU."""
    from lightning_geo.strategies import topology_detect
    from lightning_geo.strategies.topology import cpu_node_topology

    try:
        return topology_detect.detect_node_topology()
    except topology_detect.NoGPUFoundError as err:
        note = (f"no GPU found ({'; '.join(err.reasons)}): showing {gpus_per_node or 1} gloo process(es) on "
                "this CPU, as strategy='geo_hybrid' would run here; pass --file with a saved `nvidia-smi topo -m` "
                "output to plan for a GPU machine")
        return replace(cpu_node_topology(gpus_per_node or 1), warnings=(note,))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_CLI_COMMANDS:
        from lightning_geo.demo.lightning_cli import run_lightning_cli

        # None: LightningCLI reads sys.argv itself (given them as args too, it warns that both were passed)
        run_lightning_cli(None if from_command_line else argv, prog="lightning-geo")
        return 0
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    if args.command == "tune":
        return _tune(args)
    if args.command == "topo":
        return _topo(args)
    if args.command == "predict":
        return _predict(args)
    if args.command == "serve":
        return _serve(args)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse only accepts known commands
