"""The demo's budgets (seconds, tokens, steps), its BPE vocabulary, and the default `demo`: both arms, one table."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_geo.callbacks.curriculum_pacing import Deadline
from lightning_geo.cli import main
from lightning_geo.demo.bpe import load_bpe_corpus
from lightning_geo.demo.budget import Budget
from lightning_geo.demo.compare import first_reach, reach_and_stay
from lightning_geo.demo.config import DemoConfig
from lightning_geo.demo.model import budget_warmup_cosine
from lightning_geo.demo.run import run_demo

TINY_MODEL = dict(batch_size=4, seq_len=32, n_layer=1, n_head=2, n_embd=32, val_samples=8, progress_bar=False,
                  sample_chars=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60s", Budget(60, "seconds")), ("90 seconds", Budget(90, "seconds")), ("2 min", Budget(120, "seconds")),
     ("2M", Budget(2e6, "tokens")), ("500k tokens", Budget(5e5, "tokens")), ("300 steps", Budget(300, "steps")),
     (1000, Budget(1000, "tokens"))],
)
def test_budget_parses_seconds_tokens_and_steps(text, expected):
    assert Budget.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [("0s", "must be positive"), ("ten", "is not a budget"),
                                               ("3 hours", "unknown unit 'hours'"), ("2k s", "for token counts")])
def test_a_bad_budget_names_itself(text, message):
    with pytest.raises(ValueError, match="budget") as info:
        Budget.parse(text)
    assert message in str(info.value)


def test_curriculum_deadline_takes_seconds():
    assert Deadline.parse("30s") == Deadline(30.0, "seconds")
    assert Deadline.parse("12.5 seconds") == Deadline(12.5, "seconds")


def test_budget_schedule_warms_up_then_decays_to_a_tenth():
    assert budget_warmup_cosine(0.0, warmup_share=0.1) == pytest.approx(1e-3)
    assert budget_warmup_cosine(0.05, warmup_share=0.1) == pytest.approx(0.5)
    assert budget_warmup_cosine(0.1, warmup_share=0.1) == pytest.approx(1.0)
    assert budget_warmup_cosine(1.0, warmup_share=0.1) == pytest.approx(0.1)


def test_first_reach_interpolates_in_seconds():
    assert first_reach([1.0, 2.0, 4.0], [3.0, 2.0, 1.0], 1.5) == pytest.approx(3.0)
    assert first_reach([1.0, 2.0], [3.0, 2.0], 1.0) is None


def test_geo_arm_reaches_its_peak_rate_only_after_sequences_reach_full_length():
    """Full-length batches start below the GEO arm's peak LR: its warmup ends after the sequence-length warmup."""
    from lightning_geo.demo.config import DEMO_LEARNING_RATES, DEMO_WARMUP_SHARES

    seq_len_warmup = DemoConfig().seq_len_warmup
    assert DEMO_WARMUP_SHARES["geo"] > seq_len_warmup
    at_full_length = budget_warmup_cosine(seq_len_warmup, warmup_share=DEMO_WARMUP_SHARES["geo"])
    assert at_full_length * DEMO_LEARNING_RATES["geo"] < 0.75 * 0.0131  # well below the rate that stalled


def test_reach_and_stay_waits_for_the_last_crossing():
    spiking = [5.0, 3.0, 6.0, 2.0, 1.0]  # under 4 at x=2, back over it at x=3, under it for good after that
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert first_reach(xs, spiking, 4.0) == pytest.approx(1.5)
    assert reach_and_stay(xs, spiking, 4.0) == pytest.approx(3.5)
    assert reach_and_stay(xs[:3], [5.0, 3.0, 2.0], 4.0) == first_reach(xs[:3], [5.0, 3.0, 2.0], 4.0)
    assert reach_and_stay(xs[:3], [3.0, 2.0, 1.0], 4.0) == 1.0  # below from the first validation on
    assert reach_and_stay(xs[:3], [5.0, 3.0, 4.5], 4.0) is None  # ends above it
    assert reach_and_stay(xs[:3], [3.0, float("nan"), 1.0], 4.0) == 3.0  # NaN is not below
    assert reach_and_stay([], [], 4.0) is None


def test_a_token_budget_stops_once_spent_validates_evenly_and_decays_the_lr(tmp_path, text_folder):
    """4 x 32 tokens a step, a budget of 2,000 tokens: 16 steps (the first to pass 2,000), 4 validations, the
    last at the end, and the LR at its floor (a tenth of the peak) when the budget is spent."""
    config = DemoConfig(corpus=str(text_folder), tokenizer="char", budget="2000", val_points=4, lr=1e-3,
                        out=str(tmp_path), **TINY_MODEL)
    result = run_demo(config)
    assert result is not None and result.steps == 16 and result.tokens == 16 * 4 * 32
    assert [tokens for _, tokens, _ in result.val_curve] == [512, 1024, 1536, 2048]
    assert len(result.val_seconds) == 4 and list(result.val_seconds) == sorted(result.val_seconds)
    assert result.budget == "2,000 tokens"
    acc = EventAccumulator(str(result.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("lr-AdamW/pg1")]
    assert max(lrs) == pytest.approx(1e-3, rel=0.05) and lrs[-1] == pytest.approx(1e-4, rel=0.3)  # the last step


def test_a_seconds_budget_stops_with_the_geo_arms_curriculum_on_the_same_clock(tmp_path, text_folder):
    config = DemoConfig(corpus=str(text_folder), tokenizer="char", budget="2s", val_points=2, geo=True,
                        precision="bf16-mixed", out=str(tmp_path), **TINY_MODEL)
    result = run_demo(config)
    assert result is not None and 2.0 <= result.val_seconds[-1] < 4.0
    acc = EventAccumulator(str(result.log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    seq_len = [e.value for e in acc.Scalars("geo/curriculum/seq_len")]
    assert seq_len[0] == 8 and seq_len[-1] == 32  # grown to full length within 30% of the 2 s


def test_bpe_corpus_round_trips_text_and_is_cached(tmp_path, text_folder):
    cache = tmp_path / "cache"
    corpus = load_bpe_corpus(text_folder, vocab_size=300, cache_dir=cache)
    assert corpus.vocab_size <= 300 and corpus.vocab == corpus.vocab_size
    text = "def f(x):\n    return x * 2  # ünïcode\n"
    assert corpus.decode(corpus.encode(text)) == text
    assert int(corpus.train.max()) < corpus.vocab_size and corpus.chars_per_token > 1.0
    (entry,) = cache.iterdir()
    stamp = (entry / "train.npy").stat().st_mtime_ns
    again = load_bpe_corpus(text_folder, vocab_size=300, cache_dir=cache)
    assert (entry / "train.npy").stat().st_mtime_ns == stamp and again.train.equal(corpus.train)
    with pytest.raises(ValueError, match="vocab_size"):
        load_bpe_corpus(text_folder, vocab_size=100, cache_dir=cache)


@pytest.mark.slow
def test_demo_by_default_trains_both_arms_on_one_budget_and_prints_the_comparison(tmp_path, text_folder, capsys,
                                                                                 monkeypatch):
    """`lightning-geo demo` with only sizes given: BPE, a budget, plain then recipe(), one table and one PNG."""
    monkeypatch.setenv("LIGHTNING_GEO_CACHE", str(tmp_path / "cache"))
    argv = ["demo", "--corpus", str(text_folder), "--out", str(tmp_path), "--budget", "3000 tokens",
            "--vocab-size", "300", "--val-points", "3", "--batch-size", "4", "--seq-len", "32", "--n-layer", "1",
            "--n-embd", "32", "--n-head", "2", "--val-samples", "8", "--no-progress-bar"]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    assert code == 0, err
    table = out[out.index("plain Lightning vs lightning_geo.recipe()"):]
    for text in ("3,000 tokens each", "reached (s)", "stays (s)", "GEO vs Lightning",
                 "nats/token", "skipped", "peak MiB"):
        assert text in table, text
    assert "GEO reached plain Lightning's final validation loss" in out or "GEO did not reach" in out
    assert (tmp_path / "compare" / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
