"""How close does ``LengthBucketing`` get ``trainer.predict`` to the padding limit, on real variable-length text?

``python benchmarks/predict.py [--samples 320] [--reps 3] [--batch-size 32] [--max-len 512] [--max-tokens 2048]
[--texts docstrings,prose,short] [--background-load K | --load-sweep [0,2]]``

Three real texts (``--texts``, all by default), as character ids (byte values of the characters, 256 ids), each
sample cut at ``--max-len``:

- ``docstrings``: the demo corpus (the Python standard library's sources) split into its docstrings (``ast``:
  modules, classes, functions), every k-th of them in file order;
- ``prose``: the paragraphs of the Python documentation's topics (``pydoc_data.topics``, in the stdlib), every
  k-th;
- ``short`` (``short prose`` in the tables): the paragraphs of the same source of 10..80 characters (headings,
  one-line sentences, grammar rules; about 40 characters on average), every k-th. Here the padding limit is
  small (about 1.8) and per-batch overhead is a large part of each run, so the x2.5 speed target can only be
  met if bucketing also saves batches.

Two models with fixed random weights (``seed 0``), in ``trainer.predict``:

- ``classifier``: a 2-block bidirectional attention encoder (width 128, 4 heads, key-padding mask), masked mean
  pooling, 4 logits per sample;
- ``demo LM``: the demo's ``CharGPT`` (4 x 128, context ``--max-len``) scoring each sample's mean next-character
  loss over its real characters (nats).

Arms: ``plain`` (DataLoader of ``--batch-size``, each batch padded to its longest sample); ``bucketing`` (the
same DataLoader with ``LengthBucketing(max_tokens=2048)``: on this CPU budgets of 2048-4096 ran fastest, 16384,
plain's largest batch, 1.5x slower: batches past the caches cost more per token. It is one setting for every
text, as a user would set it: on 320 short-prose samples it makes 8 batches of 12..81 samples to plain's 10);
``+bf16 GEO`` (bucketing under ``PredictiveScalingPrecision("bf16-mixed")``); ``+bf16 Lightning`` (bucketing
under Lightning's ``precision="bf16-mixed"``, for reference); ``+int8`` (bucketing, Linear layers dynamically
quantized to int8 by ``torch.ao.quantization.quantize_dynamic``). Arms interleave over ``--reps`` repetitions;
samples/s is the median, ``x plain`` the median of each repetition's ratio.

``peak MiB``: most bytes of live tensors during one separate, untimed ``trainer.predict`` of the arm (a
``TorchDispatchMode`` counts each op's output storage until it is freed; quantized tensors are not counted).
``max |diff|``: the largest difference of any output to plain fp32's, in dataset order. ``padding limit``:
plain's padded tokens / real tokens, the speed-up a perfect bucketing of this data gives a model whose cost is
linear in tokens (attention's grows faster); ``% of limit``: bucketing's measured ratio over it.

Load: ``--background-load K`` keeps K processes busy-looping in pure Python while the runs are measured (started
before the warm-up, stopped after the last run, also on an exception, Ctrl-C or SIGTERM), to see how the ratio
moves on a loaded machine. ``--load-sweep`` (loads 0 and 2 unless given, such as ``--load-sweep 0,1,2``) measures
at each load in turn: all arms with peaks at the first load, only ``plain`` and ``bucketing`` (still interleaved)
at the others, then one table with bucketing's ``x plain`` and ``% of limit`` at every load side by side. The
target is judged at the first (or only) load.
"""

from __future__ import annotations

import argparse
import ast
import copy
import multiprocessing
import os
import signal
import statistics
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from bench_common import Transcript, code_version, keep_freed_memory, quiet_lightning, quiet_trainer, verdict
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, Dataset
from torch.utils.weak import WeakIdKeyDictionary

from lightning_geo.callbacks import LengthBucketing
from lightning_geo.demo.corpus import stdlib_source_dir
from lightning_geo.demo.model import CharGPT, GPTConfig
from lightning_geo.precision import PredictiveScalingPrecision
from lightning_geo.utils.bucket_collate import pad_collate
from lightning_geo.utils.table import format_table

ARMS = ("plain", "bucketing", "+bf16 GEO", "+bf16 Lightning", "+int8")
SPEED_TARGET = 2.5  # bucketing alone, fp32: x plain's samples/s
LIMIT_SHARE_TARGET = 0.8  # ... and this share of the padding limit
DIFF_TARGET = 1e-5  # largest output difference to plain fp32
RESULTS = Path(__file__).parent / "results" / "predict_cpu.txt"


# --------------------------------------------------------------------------------------------- data
class CharTexts(Dataset):
    """Texts as character ids (``ord(c) % 256``), cut at ``max_len``; ``lengths`` for LengthBucketing."""

    def __init__(self, texts: list[str], max_len: int) -> None:
        self.ids = [torch.tensor([ord(c) % 256 for c in text[:max_len]], dtype=torch.long) for text in texts]
        self.lengths = [len(ids) for ids in self.ids]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i])}


def stdlib_docstrings(count: int) -> list[str]:
    """``count`` docstrings (modules, classes, functions) of the standard library's sources, spread evenly."""
    found: list[str] = []
    for path in sorted(stdlib_source_dir().rglob("*.py")):
        if {"site-packages", "test", "tests"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs = (ast.get_docstring(node) or "" for node in ast.walk(tree) if isinstance(node, kinds))
        found += [doc for doc in docs if len(doc) >= 2]
        if len(found) >= 6000:  # the first ~300 files: enough to spread `count` samples over, in a few seconds
            break
    step = max(1, len(found) // count)
    return found[::step][:count]


def _topic_paragraphs() -> list[str]:
    """Every paragraph (2 characters or more) of the Python documentation's topics, topics in name order."""
    from pydoc_data.topics import topics

    return [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n") if len(p.strip()) >= 2]


def _spread(items: list[str], count: int) -> list[str]:
    """``count`` of ``items``, every k-th (or all of them if there are fewer)."""
    step = max(1, len(items) // count)
    return items[::step][:count]


def doc_paragraphs(count: int) -> list[str]:
    """``count`` paragraphs of the Python documentation's topics, spread evenly (``pydoc_data.topics``)."""
    return _spread(_topic_paragraphs(), count)


def short_paragraphs(count: int, *, min_chars: int = 10, max_chars: int = 80) -> list[str]:
    """``count`` paragraphs of :func:`doc_paragraphs`' source of ``min_chars..max_chars`` characters, spread evenly
    (headings, one-line sentences and grammar rules: about 40 characters on average)."""
    return _spread([p for p in _topic_paragraphs() if min_chars <= len(p) <= max_chars], count)


TEXTS: dict[str, tuple[str, Callable[[int], list[str]]]] = {
    "docstrings": ("docstrings", stdlib_docstrings),
    "prose": ("prose", doc_paragraphs),
    "short": ("short prose", short_paragraphs),
}
"""``--texts`` key -> (name in the tables, ``count`` -> that many samples)."""


def padding_limit(lengths: list[int], batch_size: int) -> float:
    """Plain batching's padded tokens / real tokens, batches taken in dataset order."""
    padded = sum(len(lengths[s : s + batch_size]) * max(lengths[s : s + batch_size])
                 for s in range(0, len(lengths), batch_size))
    return padded / sum(lengths)


# --------------------------------------------------------------------------------------------- load
def _spin(stop: Any, parent: int) -> None:
    """Busy-loop in pure Python until ``stop`` is set or the parent process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops us
    while not stop.is_set() and os.getppid() == parent:
        for _ in range(100_000):
            pass


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `background_load`, which stops its processes


@contextmanager
def background_load(num_procs: int) -> Iterator[None]:
    """``num_procs`` processes busy-looping (pure Python) while the block runs, stopped when it ends, also on an
    exception, Ctrl-C or SIGTERM; each also stops by itself if this process dies."""
    if num_procs <= 0:
        yield
        return
    context = multiprocessing.get_context("fork")  # cheap: no re-import of torch and Lightning
    stop = context.Event()
    procs: list[Any] = []
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for i in range(num_procs):
            proc = context.Process(target=_spin, args=(stop, os.getpid()), name=f"background-load-{i}", daemon=True)
            proc.start()
            procs.append(proc)
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------- models
class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])  # padding keys masked
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class Classifier(pl.LightningModule):
    """Bidirectional attention encoder + masked mean pooling -> ``num_classes`` logits per sample."""

    def __init__(self, max_len: int, width: int = 128, heads: int = 4, layers: int = 2, num_classes: int = 4) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(256, width), nn.Embedding(max_len, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        ids, keep = batch["input_ids"], batch["attention_mask"].bool()  # (B, T)
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))  # (B, T, C)
        for block in self.blocks:
            x = block(x, keep)
        weights = keep.unsqueeze(-1).to(x.dtype)
        pooled = (self.ln_f(x) * weights).sum(1) / weights.sum(1)  # (B, C)
        return self.head(pooled).float()


class LMScorer(pl.LightningModule):
    """The demo's CharGPT scoring each sample: mean next-character loss over its real characters (nats)."""

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.model = CharGPT(GPTConfig(vocab_size=256, seq_len=max_len))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = self.model(ids[:, :-1])  # (B, T-1, V); causal: padding on the right changes no real position
        losses = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        targets = mask[:, 1:].float()
        return (losses * targets).sum(1) / targets.sum(1).clamp(min=1)


MODELS = {"classifier": Classifier, "demo LM": LMScorer}


# --------------------------------------------------------------------------------------------- runs
@dataclass
class ArmResult:
    seconds: list[float]
    outputs: Tensor
    peak_bytes: int = 0


def _trainer(arm: str, max_tokens: int) -> pl.Trainer:
    kwargs: dict[str, Any] = {"callbacks": [] if arm == "plain" else [LengthBucketing(max_tokens=max_tokens)]}
    if arm == "+bf16 GEO":
        kwargs["plugins"] = [PredictiveScalingPrecision("bf16-mixed")]
    elif arm == "+bf16 Lightning":
        kwargs["precision"] = "bf16-mixed"
    return quiet_trainer(**kwargs)


def _module_for(arm: str, module: pl.LightningModule) -> pl.LightningModule:
    if arm != "+int8":
        return module
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13: quantized-tensor creation is deprecated (torchao is the heir)
        return quantize_dynamic(copy.deepcopy(module), {nn.Linear}, dtype=torch.qint8)


def predict_once(arm: str, module: pl.LightningModule, loader: DataLoader, max_tokens: int) -> tuple[float, Tensor]:
    trainer = _trainer(arm, max_tokens)
    start = time.perf_counter()
    batches = trainer.predict(module, loader)
    return time.perf_counter() - start, torch.cat([b.float() for b in batches])


class LiveTensorPeak(TorchDispatchMode):
    """Most bytes of live tensor storage while active: every op's outputs counted until their storage is freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, Tensor) or tensor.is_quantized:
                continue
            storage = tensor.untyped_storage()
            if storage not in self._seen:
                nbytes = storage.nbytes()
                self._seen[storage] = weakref.ref(storage, lambda _, n=nbytes: self._free(n))
                self.live += nbytes
                self.peak = max(self.peak, self.live)
        return out


def peak_tensor_bytes(arm: str, module: pl.LightningModule, loader: DataLoader, max_tokens: int) -> int:
    with LiveTensorPeak() as tracker:
        predict_once(arm, module, loader, max_tokens)
    return tracker.peak


def run_case(dataset: CharTexts, model_name: str, args: argparse.Namespace, log: Transcript, *,
             arms: Sequence[str] = ARMS, measure_peaks: bool = True) -> dict[str, ArmResult]:
    """Times ``arms`` over ``args.reps`` interleaved repetitions (after one warm-up), then measures each arm's
    peak memory in a separate run if ``measure_peaks``."""
    torch.manual_seed(0)
    base = MODELS[model_name](args.max_len).eval()
    modules = {arm: _module_for(arm, base) for arm in arms}
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=pad_collate)
    max_tokens = args.max_tokens
    results = {arm: ArmResult([], torch.empty(0)) for arm in arms}
    predict_once("bucketing", modules["bucketing"], loader, max_tokens)  # warm-up: lazy inits, allocator
    for rep in range(args.reps):
        for arm in arms:
            seconds, outputs = predict_once(arm, modules[arm], loader, max_tokens)
            results[arm].seconds.append(seconds)
            results[arm].outputs = outputs
        log(f"  rep {rep + 1}: " + ", ".join(f"{arm} {results[arm].seconds[-1]:.2f} s" for arm in arms))
    if measure_peaks:
        for arm in arms:
            results[arm].peak_bytes = peak_tensor_bytes(arm, modules[arm], loader, max_tokens)
    return results


def case_rows(dataset: CharTexts, results: dict[str, ArmResult], model_name: str) -> tuple[list[list[Any]], float]:
    """One table row per arm of ``results`` and bucketing's ``x plain`` (median of the repetitions' ratios)."""
    plain = results["plain"]
    rows = []
    bucketing_ratio = 0.0
    for arm, r in results.items():
        ratios = [p / s for p, s in zip(plain.seconds, r.seconds, strict=True)]
        ratio = statistics.median(ratios)
        if arm == "bucketing":
            bucketing_ratio = ratio
        diff = (r.outputs - plain.outputs).abs().max().item()
        if model_name == "classifier":
            agree = (r.outputs.argmax(1) == plain.outputs.argmax(1)).float().mean().item()
            quality = f"argmax agrees {agree:.1%}"
        else:
            rel = ((r.outputs - plain.outputs).abs() / plain.outputs.abs()).mean().item()
            quality = f"mean rel. loss change {rel:.1e}"
        peak = f"{r.peak_bytes / 2**20:,.1f}" if r.peak_bytes else "-"
        rows.append([arm, f"{len(dataset) / statistics.median(r.seconds):,.0f}", f"x{ratio:.2f}",
                     f"{min(ratios):.2f}..{max(ratios):.2f}", peak, f"{diff:.1e}", quality])
    return rows, bucketing_ratio


@dataclass
class CaseSummary:
    """Bucketing against plain for one text and model at one background load."""

    text: str
    model: str
    load: int
    limit: float  # the padding limit
    ratio: float  # bucketing's x plain
    plain_rate: float  # plain's samples/s (median)
    met: bool | None = None  # the target, where it was judged
    detail: str = ""


def measure(texts: dict[str, list[str]], args: argparse.Namespace, log: Transcript, *, load: int,
            arms: Sequence[str], judge: bool) -> list[CaseSummary]:
    """Every text x model at background ``load``: ``arms`` timed; with ``judge`` also peaks and the target."""
    summaries = []
    with background_load(load):
        for text_name, samples in texts.items():
            dataset = CharTexts(samples, args.max_len)
            limit = padding_limit(dataset.lengths, args.batch_size)
            lengths = sorted(dataset.lengths)
            log(f"\n{text_name}: {len(dataset)} samples, {sum(lengths):,} characters, lengths "
                f"{lengths[0]}..{lengths[-1]} (mean {sum(lengths) / len(lengths):.0f}, median "
                f"{lengths[len(lengths) // 2]}); padding limit {limit:.2f}; background load {load}")
            for model_name in MODELS:
                log(f" {model_name}:")
                results = run_case(dataset, model_name, args, log, arms=arms, measure_peaks=judge)
                rows, ratio = case_rows(dataset, results, model_name)
                log(format_table(["arm", "samples/s", "x plain", "range", "peak MiB", "max |diff|",
                                  "quality vs plain"], rows))
                log(f"  padding limit {limit:.2f}, bucketing x{ratio:.2f} = {ratio / limit:.0%} of it")
                summary = CaseSummary(text_name, model_name, load, limit, ratio,
                                      len(dataset) / statistics.median(results["plain"].seconds))
                if judge:
                    bucketing, plain = results["bucketing"], results["plain"]
                    diff = (bucketing.outputs - plain.outputs).abs().max().item()
                    memory_ok = bucketing.peak_bytes <= plain.peak_bytes
                    summary.met = (ratio >= SPEED_TARGET and ratio >= LIMIT_SHARE_TARGET * limit
                                   and diff <= DIFF_TARGET and memory_ok)
                    summary.detail = (f"x{ratio:.2f} ({ratio / limit:.0%} of limit {limit:.2f}), max |diff| "
                                      f"{diff:.1e}, peak {bucketing.peak_bytes / 2**20:.1f} vs plain "
                                      f"{plain.peak_bytes / 2**20:.1f} MiB")
                summaries.append(summary)
    return summaries


def sweep_table(summaries: list[CaseSummary], loads: list[int]) -> str:
    """Per text and model: plain's samples/s, bucketing's x plain and its share of the limit at each load."""
    header = ["text", "model", "limit"]
    for load in loads:
        header += [f"load {load}: plain/s", f"load {load}: x plain", f"load {load}: % of limit"]
    cases = {(s.text, s.model, s.load): s for s in summaries}
    rows = []
    for text, model in dict.fromkeys((s.text, s.model) for s in summaries):
        row: list[Any] = [text, model, f"{cases[text, model, loads[0]].limit:.2f}"]
        for load in loads:
            s = cases[text, model, load]
            row += [f"{s.plain_rate:,.0f}", f"x{s.ratio:.2f}", f"{s.ratio / s.limit:.0%}"]
        rows.append(row)
    return format_table(header, rows)


def _loads(value: str) -> list[int]:
    loads = [int(k) for k in value.split(",")]
    if not loads or any(k < 0 for k in loads):
        raise argparse.ArgumentTypeError(f"{value!r}: give background loads as counts >= 0, such as 0,2")
    return loads


def _texts(value: str) -> list[str]:
    keys = [k.strip() for k in value.split(",")]
    if not keys or any(k not in TEXTS for k in keys):
        raise argparse.ArgumentTypeError(f"{value!r}: choose texts from {','.join(TEXTS)}")
    return list(dict.fromkeys(keys))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=320, help="samples per text")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (arms interleaved)")
    parser.add_argument("--batch-size", type=int, default=32, help="plain DataLoader batch size")
    parser.add_argument("--max-len", type=int, default=512, help="characters per sample at most")
    parser.add_argument("--max-tokens", type=int, default=2048, help="LengthBucketing's padded-token budget per batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--texts", type=_texts, default=list(TEXTS), help=f"texts to run (default {','.join(TEXTS)})")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--background-load", type=int, default=0, metavar="K",
                      help="processes busy-looping while the runs are measured (default 0)")
    load.add_argument("--load-sweep", type=_loads, nargs="?", const=[0, 2], metavar="K,K",
                      help="measure at each of these background loads (default 0,2): all arms at the first, which "
                           "the target is judged at, plain and bucketing at the others; then one table of them")
    parser.add_argument("--no-save", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    if args.background_load < 0:
        parser.error(f"--background-load {args.background_load}: give a count of processes >= 0")
    loads = args.load_sweep or [args.background_load]
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    quiet_lightning(".*LeafSpec.*", ".*predict returned None.*", ".*MemTracker.*", ".*bf16.*", ".*quantiz.*")
    log = Transcript()
    started = time.perf_counter()
    texts = {TEXTS[key][0]: TEXTS[key][1](args.samples) for key in args.texts}
    mark = log.mark()
    load_flag = (f"--load-sweep {','.join(map(str, loads))}" if args.load_sweep
                 else f"--background-load {args.background_load}")
    log(f"$ python benchmarks/predict.py --samples {args.samples} --reps {args.reps} --batch-size {args.batch_size} "
        f"--max-len {args.max_len} --max-tokens {args.max_tokens} --threads {args.threads} "
        f"--texts {','.join(args.texts)} {load_flag}")
    log(f"{code_version()}, torch {torch.__version__}, CPU ({os.cpu_count()} cores), {args.threads} thread(s); "
        f"LengthBucketing(max_tokens={args.max_tokens}); plain's largest batch: {args.batch_size} x {args.max_len} "
        f"= {args.batch_size * args.max_len} tokens")
    summaries: list[CaseSummary] = []
    for i, load in enumerate(loads):
        arms = ARMS if i == 0 else ("plain", "bucketing")
        if len(loads) > 1:
            log(f"\n=== background load {load}: {load} process(es) busy-looping; arms {', '.join(arms)}")
        pass_started = time.perf_counter()
        summaries += measure(texts, args, log, load=load, arms=arms, judge=i == 0)
        if len(loads) > 1:
            log(f"\n(background load {load}: {(time.perf_counter() - pass_started) / 60:.1f} min)")
    if len(loads) > 1:
        log(f"\nbucketing vs plain at background loads {', '.join(map(str, loads))} (samples/s: plain's; "
            f"x plain: bucketing's; % of limit: of the padding limit)")
        log(sweep_table(summaries, loads))
    judged = [s for s in summaries if s.met is not None]
    every = "on every text" + (", including short paragraphs" if "short" in args.texts else "")
    log("")
    for line in verdict(all(s.met for s in judged),
                        f"LengthBucketing alone, fp32 CPU, background load {loads[0]}, {every}: >= "
                        f"{LIMIT_SHARE_TARGET:.0%} of the padding limit and >= x{SPEED_TARGET} plain's samples/s, "
                        f"outputs within {DIFF_TARGET:g}, peak memory <= plain's",
                        [f"{'MET' if s.met else 'MISSED'} {s.text} / {s.model}: {s.detail}" for s in judged]):
        log(line)
    log(f"\n({(time.perf_counter() - started) / 60:.1f} min)")
    if not args.no_save:
        RESULTS.write_text(log.since(mark) + "\n")
        print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
