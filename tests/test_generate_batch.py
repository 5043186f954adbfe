"""--num-samples N (issue 24): N samples of one prompt as one batch through the KV cache, on both backends. Sample
i of --seed s is the sample --seed s+i gives alone (stops and the context's slide included), and at temperature 0
the two backends give the same ids."""
import os
import re

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import pytest

from nano_core import checkpoint as ck
from nano_core.config import ModelConfig
from nano_core.generate import generate, generate_batch, sample_seed
from nano_core.init import init_weights
from tokenizer import CharTokenizer

from helpers import backend_class

# a context of 16 with 40 new tokens: every sample slides past it (the cache is refilled) twice
CFG = ModelConfig(vocab_size=61, n_layer=2, n_head=2, n_embd=32, seq_len=16, pos="rope").validate()
PROMPT = [3, 14, 15, 9, 26]


@pytest.fixture(scope="module", params=["torch", "mlx"])
def built(request):
    backend = backend_class(request.param)(device="cpu", dtype="fp32")
    return backend, backend.build_model(CFG, init_weights(CFG, 0))


def test_sample_i_of_a_batch_is_the_single_sample_of_seed_plus_i(built):
    backend, model = built
    kw = dict(temperature=1.0, top_k=0, top_p=1.0)
    batch = generate_batch(backend, model, PROMPT, 40, seed=7, num_samples=3, **kw)
    alone = [generate(backend, model, PROMPT, 40, seed=sample_seed(7, i), **kw) for i in range(3)]
    assert batch == alone and all(len(ids) == 40 for ids in batch)
    assert len({tuple(ids) for ids in batch}) == 3  # three seeds, three samples


def test_a_row_that_draws_the_stop_id_ends_there_and_the_others_go_on(built):
    backend, model = built
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, seed=7)
    free = generate_batch(backend, model, PROMPT, 40, num_samples=3, **kw)
    stop = free[1][5]  # row 1 draws it at its 6th token (or sooner)
    done = []
    batch = generate_batch(backend, model, PROMPT, 40, num_samples=3, stop_id=stop,
                           on_done=lambda row, ids: done.append(row), **kw)
    assert batch == [ids[:ids.index(stop)] if stop in ids else ids for ids in free]
    stopped = sorted((r for r in range(3) if len(batch[r]) < 40), key=lambda r: len(batch[r]))
    assert len(batch[1]) <= 5 and sorted(done) == [0, 1, 2]
    assert done[:len(stopped)] == stopped  # each row is done as soon as it stops, not when the batch ends
    assert batch[1] == generate(backend, model, PROMPT, 40, temperature=1.0, top_k=0, seed=sample_seed(7, 1),
                                stop_id=stop)


def test_greedy_samples_are_equal_across_backends():
    rows = {}
    for name in ("torch", "mlx"):
        backend = backend_class(name)(device="cpu", dtype="fp32")
        model = backend.build_model(CFG, init_weights(CFG, 0))
        rows[name] = generate_batch(backend, model, PROMPT, 40, temperature=0.0, seed=3, num_samples=3)
    assert rows["torch"] == rows["mlx"]
    assert rows["torch"][0] == rows["torch"][1] == rows["torch"][2]  # greedy: the seed picks nothing


@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    """A checkpoint of CFG with a character tokenizer (60 characters + <|endoftext|>)."""
    root = tmp_path_factory.mktemp("batch-gen")
    tok = CharTokenizer(sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\n"))[:60])
    tok.save(root / "tokenizer")
    meta = {"model_config": CFG.to_dict(), "train_config": {}, "loader_state": {}, "backend": "torch"}
    return ck.save_checkpoint(root / "run", 1, init_weights(CFG, 0), {}, meta, tokenizer_dir=root / "tokenizer")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_the_command_prints_each_sample_numbered_with_the_seed_that_gives_it_alone(backend, char_ckpt, capsys):
    main = __import__(f"nano_{backend}.generate", fromlist=["main"]).main
    argv = ["--ckpt", str(char_ckpt), "--prompt", "To be", "--max-new-tokens", "30", "--temperature", "1",
            "--top-k", "0", "--device", "cpu"]
    main([*argv, "--seed", "4", "--num-samples", "3"])
    out, err = capsys.readouterr()
    parts = re.split(r"^=== sample (\d) of 3 \(--seed (\d+)\) ===\n", out, flags=re.M)
    samples = sorted(zip(parts[1::3], parts[2::3], parts[3::3]))  # printed as each is done: any order
    assert parts[0] == "" and [(n, seed) for n, seed, _ in samples] == [("1", "4"), ("2", "5"), ("3", "6")]
    assert re.search(r"\[\d+ tokens in", err)
    for _, seed, text in samples:
        main([*argv, "--seed", seed])
        assert capsys.readouterr().out == text  # the streamed single sample of that seed, the same text


@pytest.mark.parametrize("value", ["0", "-2", "100000"])
def test_a_bad_number_of_samples_is_one_line_naming_the_flag(char_ckpt, capsys, value):
    from nano_torch.generate import main

    with pytest.raises(SystemExit) as stop:
        main(["--ckpt", str(char_ckpt), "--num-samples", value, "--device", "cpu"])
    message = str(stop.value.code)
    assert message.startswith("error: --num-samples must be an integer") and value in message
    assert "\n" not in message and "Traceback" not in capsys.readouterr().err
