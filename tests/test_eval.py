"""Evaluation (nano_core/eval_tasks.py, eval.py): the scoring proved against independent computations (a plain
PyTorch loop, a model with known probabilities), sliding windows that score every token once, the two backends
agreeing item by item, HellaSwag at chance for a random model, the eval CLIs and --eval-tasks during training, and
bad input."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nano_core import eval as ev
from nano_core import eval_tasks
from nano_core.config import ModelConfig
from nano_core.init import init_weights
from helpers import MICRO, micro_setup, reference_run, train_args, train_main
from tokenizer import load_tokenizer


def backend_class(name: str):
    return __import__(f"nano_{name}.backend", fromlist=["Backend"]).Backend


def scorer_for(name: str, run: Path, batch_size: int = 16, seq_len: int | None = None) -> eval_tasks.Scorer:
    """A Scorer over the newest checkpoint of `run` (optionally with a shorter context)."""
    from nano_core.checkpoint import load_checkpoint

    weights, _, meta = load_checkpoint(run)
    cfg = ModelConfig.from_dict({**meta["model_config"], **({"seq_len": seq_len} if seq_len else {})})
    if seq_len:
        weights = {**weights, "wpe.weight": weights["wpe.weight"][:seq_len]}
    backend = backend_class(name)(device="cpu", dtype="fp32")
    tokenizer = load_tokenizer(run / "ckpt_0000008" / "tokenizer")
    return eval_tasks.Scorer(backend, backend.build_model(cfg, weights), tokenizer, batch_size, progress=False)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("n, context, stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3),
                                                (100, 8, 1), (37, 16, 5)])
def test_sliding_windows_score_every_target_exactly_once(n, context, stride):
    windows = eval_tasks.stream_windows(n, context, stride)
    scored = [t for start, end, first in windows for t in range(first, end)]
    assert scored == list(range(1, n))  # each target once, in order
    for start, end, first in windows:
        assert end - start <= context + 1 and start < first  # fits the model, with at least one token of context
    if stride == context:  # non-overlapping: no token is fed twice except the one shared border token
        assert all(w2[0] == w1[1] - 1 for w1, w2 in zip(windows, windows[1:]))


@pytest.mark.e2e
def test_stride_equal_to_context_is_the_non_overlapping_figure(shared_data):
    scorer = scorer_for("torch", reference_run("torch", shared_data))
    ids = [scorer.tok.eot_id] + scorer.tok.encode((shared_data / "wikitext2" / "wiki.valid.raw").read_text()[:20000])
    with scorer.backend.inference(scorer.model):
        nats, targets = eval_tasks.score_stream(scorer, ids, stride=scorer.context)
        # the same figure computed by hand: consecutive chunks of context + 1 tokens sharing one border token
        by_hand = [scorer.backend.token_losses(scorer.model, np.array([ids[s:s + scorer.context + 1]], dtype=np.int32))
                   for s in range(0, len(ids) - 1, scorer.context)]
        smaller, targets_s = eval_tasks.score_stream(scorer, ids, stride=scorer.context // 4)
    np.testing.assert_allclose(nats, np.concatenate([b[0] for b in by_hand]), rtol=1e-6)
    assert targets.tolist() == ids[1:]
    assert targets_s.tolist() == ids[1:] and smaller.size == nats.size  # never a token twice, none left out
    assert smaller.mean() < nats.mean()  # more left context per token: a lower loss on real text


# ----------------------------------------------------------------------------- scoring is right
class KnownModel:
    """A 'backend' whose model gives every next token the probability table `probs[token]` regardless of context:
    the log-likelihood of any ending is known in closed form."""
    name, device, dtype = "known", "cpu", "fp32"

    def __init__(self, probs: np.ndarray):
        self.probs = probs

    def inference(self, model):
        import contextlib
        return contextlib.nullcontext()

    def token_losses(self, model, batch):
        return -np.log(self.probs[batch[:, 1:]]).astype(np.float32)


class ByteTokenizer:
    eot_id = 256
    special_tokens = {"<|endoftext|>": 256}

    def encode(self, text):
        return list(text.encode("utf-8"))

    def token_byte_lengths(self):
        return np.array([1] * 256 + [0])


def test_hellaswag_scores_match_hand_computed_log_likelihoods(tmp_path):
    probs = np.full(257, 0.5 / 250)
    probs[[ord(c) for c in " ab"]] = [0.05, 0.3, 0.02]  # the endings' characters, whatever the context
    model = type("M", (), {"cfg": ModelConfig(vocab_size=257, n_layer=1, n_head=1, n_embd=8, seq_len=64)})()
    scorer = eval_tasks.Scorer(KnownModel(probs), model, ByteTokenizer(), batch_size=8, progress=False)
    item = {"ctx": "xyz", "endings": ["a", "b", "aaa", "bb"], "label": 2}
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(item) + "\n")
    r = eval_tasks.task_hellaswag(scorer, path, None)
    want = [math.log(0.05) + sum(math.log(probs[ord(c)]) for c in e) for e in item["endings"]]  # " " + ending
    np.testing.assert_allclose(r["logliks"][0], want, rtol=1e-6)
    assert int(np.argmax(want)) == 0 and r["acc"] == 0.0  # " a" has the likeliest sum; the label is " aaa"
    per_byte = [w / (len(e) + 1) for w, e in zip(want, item["endings"])]
    assert int(np.argmax(per_byte)) == 2 and r["acc_per_byte"] == 1.0  # " aaa" is the likeliest per byte


def test_hellaswag_acc_norm_divides_by_the_endings_characters_not_bytes(tmp_path):
    """lm-eval's acc_norm: summed log-likelihood / characters of the ending (no delimiter). "é" is one character
    and two bytes: per byte it beats "aa", per character it loses."""
    probs = np.full(257, 1e-3)
    probs[[ord(" "), ord("a"), 0xC3, 0xA9]] = [math.exp(-3.0), math.exp(-1.0), math.exp(-0.75), math.exp(-0.75)]
    model = type("M", (), {"cfg": ModelConfig(vocab_size=257, n_layer=1, n_head=1, n_embd=8, seq_len=64)})()
    scorer = eval_tasks.Scorer(KnownModel(probs), model, ByteTokenizer(), batch_size=8, progress=False)
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps({"ctx": "xyz", "endings": ["é", "aa", "zzzz", "zzzz"], "label": 1}) + "\n")
    r = eval_tasks.task_hellaswag(scorer, path, None)
    np.testing.assert_allclose(r["logliks"][0][:2], [-4.5, -5.0], rtol=1e-6)
    assert (r["acc"], r["acc_per_byte"], r["acc_norm"]) == (0.0, 0.0, 1.0)  # -4.5/1 < -5/2; -4.5/3 > -5/3


def test_hellaswag_context_is_lm_evals():
    item = {"activity_label": "High jump", "ctx": "A boy is running down a track. the boy", "endings": ["a"] * 4}
    assert eval_tasks.lm_eval_request(item)[0] == "High jump: A boy is running down a track. The boy"
    split = {"activity_label": "Home", "ctx_a": "[header] How to paint [title] Buy  paint.", "ctx_b": "then PAINT",
             "endings": [" [step] Brush it. ", "b", "c", "d"]}
    # lm-eval strips before removing markers: the ending keeps the space after "[step]"
    want = ("Home: How to paint. Buy paint. Then paint", [" Brush it.", "b", "c", "d"])
    assert eval_tasks.lm_eval_request(split) == want


@pytest.mark.e2e
def test_hellaswag_log_likelihood_equals_a_plain_pytorch_loop(shared_data):
    """Ten readable lines of plain PyTorch on the same weights and item give the same four numbers."""
    run = reference_run("torch", shared_data)
    scorer = scorer_for("torch", run, seq_len=64)
    item = eval_tasks.read_hellaswag(shared_data / "hellaswag" / "hellaswag_val.jsonl", limit=4)[3]  # fits in 64 tokens
    with scorer.backend.inference(scorer.model):
        got = eval_tasks.task_hellaswag(scorer, _one_item_file(item, run), None)["logliks"][0]
    tok, model = scorer.tok, scorer.model
    want = []
    for ending in item["endings"]:
        query = "High jump: A boy is running down a track. The boy"  # lm-eval's: label, ctx_b capitalised
        ctx, end = [tok.eot_id] + tok.encode(query), tok.encode(" " + ending)
        ids = torch.tensor([ctx + end])
        with torch.no_grad():
            logp = F.log_softmax(model(ids[:, :-1]).double(), dim=-1)[0]
        want.append(sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(end)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def _one_item_file(item: dict, where: Path) -> Path:
    path = where.parent / f"one-item-{item['idx']}.jsonl"
    path.write_text(json.dumps(item) + "\n")
    return path


# ----------------------------------------------------------------------------- the two backends agree
@pytest.mark.e2e
def test_both_backends_give_the_same_item_log_likelihoods_and_perplexities(shared_data):
    run = reference_run("torch", shared_data)
    settings = ev.EvalSettings(["hellaswag", "wikitext2", "bpb"], limit=24)
    results = {name: ev.run_tasks(scorer_for(name, run), settings, str(micro_setup(shared_data)[0]))
               for name in ("torch", "mlx")}
    t, m = results["torch"], results["mlx"]
    np.testing.assert_allclose(m["hellaswag"]["logliks"], t["hellaswag"]["logliks"], rtol=1e-5)
    assert (m["hellaswag"]["acc"], m["hellaswag"]["acc_norm"]) == (t["hellaswag"]["acc"], t["hellaswag"]["acc_norm"])
    for task in ("wikitext2", "bpb"):
        for k in ("token_ppl", "bpb"):
            assert m[task][k] == pytest.approx(t[task][k], rel=1e-5), (task, k)
    assert m["wikitext2"]["word_ppl"] == pytest.approx(t["wikitext2"]["word_ppl"], rel=1e-5)


# ----------------------------------------------------------------------------- chance level
@pytest.mark.e2e
def test_hellaswag_of_a_random_model_is_chance_and_of_a_trained_one_not_worse(shared_data, tmp_path):
    """500 items: a random init scores 25% within 3 standard errors; the test-trained model is not below that."""
    data, config = micro_setup(shared_data)
    cfg = ModelConfig.from_dict({**MICRO, "vocab_size": 512})
    backend = backend_class("torch")(device="cpu", dtype="fp32")
    tok = load_tokenizer(data / "tokenizer")
    path = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    random_model = eval_tasks.Scorer(backend, backend.build_model(cfg, init_weights(cfg, 7)), tok, 64, progress=False)
    with backend.inference(random_model.model):
        r = eval_tasks.task_hellaswag(random_model, path, limit=500)
    se = math.sqrt(0.25 * 0.75 / 500)
    assert abs(r["acc"] - 0.25) < 3 * se and abs(r["acc_norm"] - 0.25) < 3 * se, r
    assert r["items"] == 500 and r["acc_stderr"] == pytest.approx(math.sqrt(r["acc"] * (1 - r["acc"]) / 499))
    out = tmp_path / "trained"
    train_main("torch")(train_args(data, config, out, **{"max-steps": 60, "eval-every": 0, "sample-every": 0,
                                                         "eval-steps": 1, "sample-tokens": 1, "log-every": 30}))
    report = __import__("nano_torch.eval", fromlist=["main"]).main(
        ["--ckpt", str(out), "--tasks", "hellaswag", "--limit", "500", "--batch-size", "64", "--device", "cpu"])
    assert report["tasks"]["hellaswag"]["acc_norm"] > 0.25 - 3 * se


# ----------------------------------------------------------------------------- the commands
@pytest.mark.e2e
@pytest.mark.parametrize("name", ["torch", "mlx"])
def test_eval_cli_prints_a_table_and_writes_every_figure_with_its_settings(name, shared_data, tmp_path, capsys):
    run = reference_run(name, shared_data)
    out = tmp_path / "eval.json"
    mod = __import__(f"nano_{name}.eval", fromlist=["main"])
    mod.main(["--ckpt", str(run), "--tasks", "bpb,wikitext2,hellaswag", "--limit", "12", "--out", str(out),
              "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "hellaswag  acc_norm" in printed and "wikitext2  word_ppl" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["step"] == 8 and report["tokens_seen"] == 8 * 4 * 64 and report["backend"] == name
    assert report["limit"] == 12 and report["context"] == 64 and report["seconds"] > 0
    tasks = report["tasks"]
    assert set(tasks) == {"bpb", "wikitext2", "hellaswag"}
    assert all(t["version"] == ev.TASK_VERSIONS[k] for k, t in tasks.items())
    assert tasks["hellaswag"]["items"] == 12 and len(tasks["hellaswag"]["logliks"]) == 12
    assert tasks["hellaswag"]["items_per_s"] > 0 and 0 <= tasks["hellaswag"]["acc"] <= 1
    wt = tasks["wikitext2"]
    assert wt["word_ppl"] == pytest.approx(math.exp(wt["nats"] / wt["words"])) and wt["words"] > 0
    assert tasks["bpb"]["source"] == ["val"] and 0 < tasks["bpb"]["bpb"] < 10


@pytest.mark.e2e
def test_eval_tasks_during_training_are_logged_and_plotted(shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    out = tmp_path / "run"
    train_main("mlx")(train_args(data, config, out, **{"max-steps": 4, "eval-every": 0, "sample-every": 0,
                                                       "eval-steps": 1, "sample-tokens": 1, "eval-tasks":
                                                           "hellaswag,wikitext2", "eval-tasks-every": 2,
                                                       "eval-limit": 8}))
    from nano_core.metrics import read_metrics

    records = [r for r in read_metrics(out) if "hellaswag_acc" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all({"hellaswag_acc_norm", "wikitext2_word_ppl", "wikitext2_bpb"} <= set(r) for r in records)
    assert (out / "loss_curve.png").stat().st_size > 0


# ----------------------------------------------------------------------------- bad input
@pytest.mark.e2e
def test_bad_eval_input_is_one_line(shared_data, tmp_path, capsys):
    run = reference_run("torch", shared_data)
    mod = __import__("nano_torch.eval", fromlist=["main"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}\n{"ctx": "a", "endings": ["b"]}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 1}\n{"ctx": \n')
    cases = [(["--tasks", "hellaswag,mmlu"], "unknown eval task mmlu"),
             (["--tasks", "wikitext2", "--wikitext2", str(tmp_path / "nope.raw")], "wikitext2 data not found"),
             (["--tasks", "hellaswag", "--hellaswag", str(bad)], f"{bad}:2: not a HellaSwag item"),
             (["--tasks", "hellaswag", "--hellaswag", str(broken)], f"{broken}:2: not valid JSON"),
             (["--tasks", "bpb", "--stride", "0"], "--stride must be in [1, context=64]"),
             (["--tasks", "bpb", "--limit", "0"], "--limit must be >= 1")]
    for args, words in cases:
        with pytest.raises(SystemExit) as e:
            mod.main(["--ckpt", str(run), "--device", "cpu", *args])
        assert isinstance(e.value.code, str) and words in e.value.code and "\n" not in e.value.code, e.value.code
    with pytest.raises(SystemExit) as e:  # a training run asking for an unknown task is refused before training
        data, config = micro_setup(shared_data)
        train_main("torch")(train_args(data, config, tmp_path / "t", **{"max-steps": 1, "eval-tasks": "hellaswg"}))
    assert "unknown eval task hellaswg" in e.value.code


@pytest.mark.e2e
def test_items_longer_than_the_context_lose_context_on_the_left_never_ending_tokens(shared_data, capsys):
    run = reference_run("torch", shared_data)
    scorer = scorer_for("torch", run, seq_len=24)  # shorter than most items
    item = {"idx": 0, "ctx": "A man is sitting on a roof, and he is talking about the weather for a long time. he",
            "endings": ["is using wrap.", "is ripping tiles.", "is holding a cube.", "starts pulling up roofing."],
            "label": 3}
    rows, lengths = eval_tasks.hellaswag_rows(scorer, item)
    fitted, fits = eval_tasks.fit_rows(scorer, rows, lengths)
    assert fits and max(map(len, fitted)) <= scorer.context + 1
    for full, cut, n in zip(rows, fitted, lengths):
        assert cut[-n:] == full[-n:] and cut == full[len(full) - len(cut):]  # ending whole, context cut on the left
    with scorer.backend.inference(scorer.model):
        r = eval_tasks.task_hellaswag(scorer, _one_item_file(item, run), None, log=print)
    assert r["truncated_items"] == 1 and "lose tokens on the left" in capsys.readouterr().out
