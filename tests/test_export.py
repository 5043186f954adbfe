"""Models that leave nano and models that come in: `python -m nano_core.export` writes a directory that transformers
and mlx-lm load with no custom code (same logits as nano, fp32, <= 1e-4; the same greedy tokens), and
nano_core.hf.load_pretrained imports gpt2 / llama / qwen3 directories that transformers itself wrote. CPU, no network,
tiny configs."""
import json
import os
import subprocess
import sys

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import EXPORT_PROMPT, greedy_in_three, shakespeare_tokenizer, torch_logits as nano_logits  # noqa: E402
import torch  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from nano_core import checkpoint as ck  # noqa: E402
from nano_core import hf  # noqa: E402
from nano_core.config import ModelConfig  # noqa: E402
from nano_core.export import export_model, main as export_main  # noqa: E402
from nano_core.init import init_weights  # noqa: E402

mx.set_default_device(mx.cpu)

V = 300
TINY = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, seq_len=32)
GPT2 = dict(pos="learned", norm="layernorm", mlp="gelu_tanh", bias=True, tie_embeddings=True)
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
EXPORTS = {  # name -> (config, layout, mlx-lm runs it exactly)
    "gpt2-gelu_tanh": (GPT2, "gpt2", True),
    "gpt2-sinusoidal": ({**GPT2, "pos": "sinusoidal"}, "gpt2", True),
    "gpt2-relu": ({**GPT2, "mlp": "relu"}, "gpt2", False),
    "gpt2-exact-gelu": ({**GPT2, "mlp": "gelu", "norm_eps": 1e-6}, "gpt2", False),
    "llama-gqa-tied": ({**LLAMA, "n_kv_head": 2, "rope_theta": 500.0}, "llama", True),
    "llama-gqa-untied": ({**LLAMA, "n_kv_head": 2, "tie_embeddings": False, "mlp_hidden": 48}, "llama", True),
    "llama-mqa-bias": ({**LLAMA, "n_kv_head": 1, "bias": True}, "llama", True),
    "qwen3-qk_norm": ({**LLAMA, "n_kv_head": 2, "qk_norm": True, "tie_embeddings": False}, "qwen3", True),
}
PROMPT = EXPORT_PROMPT


@pytest.fixture(scope="module")
def tok(shared_data):
    return shakespeare_tokenizer(shared_data, V)


def random_weights(cfg, seed=0, scale=1.0):
    """nano's init with every vector randomised too (zero biases and unit norms would hide a mapping mistake)."""
    rng = np.random.default_rng(seed + 1)
    w = init_weights(cfg, seed)
    for k, a in w.items():
        if a.ndim == 1:
            w[k] = (a + 0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        else:
            w[k] = (a * scale).astype(np.float32)
    return w


def hf_model(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path).eval()  # the files are float32


def hf_logits(path, ids):
    with torch.no_grad():
        return hf_model(path)(torch.tensor([ids])).logits.float().numpy()[0]


def mlx_logits(path, ids):
    import mlx_lm
    model, _ = mlx_lm.load(str(path))
    return np.array(model(mx.array([ids]))[0])


def export(cfg, w, tok, out, **kw):
    notices = []
    export_model(cfg, w, tok, out, notices=notices.append, **kw)
    return notices


# ---------------------------------------------------------------------------------------------- nano -> HF / mlx-lm
@pytest.mark.parametrize("name", list(EXPORTS))
def test_exported_model_gives_nanos_logits_in_transformers_and_mlx_lm(name, tok, tmp_path):
    spec, layout, mlx_exact = EXPORTS[name]
    cfg = ModelConfig(**TINY, **spec).validate()
    assert hf.export_layout(cfg) == layout
    w = random_weights(cfg)
    notices = export(cfg, w, tok, tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "generation_config.json", "model.safetensors", "nano_export.json",
                     "tokenizer.json", "tokenizer_config.json"]
    conf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert conf["model_type"] == layout and conf["eos_token_id"] == tok.eot_id
    ids = tok.encode(PROMPT)[:cfg.seq_len]
    ref = nano_logits(cfg, w, ids)
    assert np.abs(hf_logits(tmp_path / "out", ids) - ref).max() <= 1e-4
    got = mlx_logits(tmp_path / "out", ids)
    if mlx_exact:
        assert np.abs(got - ref).max() <= 1e-4
    if cfg.mlp == "gelu":  # mlx-lm's gpt2 runs the tanh GELU: a small difference, announced
        assert 0 < np.abs(got - ref).max() < 1e-2
        assert any("mlx-lm" in n and "gelu_tanh" in n for n in notices)
    if cfg.mlp == "relu":
        assert any("mlx-lm" in n and "not this model's" in n for n in notices)
    if cfg.pos == "sinusoidal":
        assert any("sinusoidal" in n for n in notices)
    if mlx_exact and cfg.pos != "sinusoidal":
        assert notices == []
    assert all("\n" not in n for n in notices)


@pytest.mark.parametrize("name", ["gpt2-gelu_tanh", "llama-gqa-untied", "qwen3-qk_norm"])
def test_greedy_generation_is_the_same_in_nano_transformers_and_mlx_lm(name, tok, tmp_path):
    spec, _, _ = EXPORTS[name]
    cfg = ModelConfig(**TINY, **spec).validate()
    w = random_weights(cfg, seed=3, scale=8.0)  # larger weights: well-separated logits, no near-ties in argmax
    export(cfg, w, tok, tmp_path / "out")
    ours, theirs, steps, htok = greedy_in_three(cfg, w, tok, tmp_path / "out")
    assert theirs == ours and [s.token for s in steps] == ours
    assert htok.eos_token_id == tok.eot_id and htok.decode(ours) == tok.decode(ours)
    assert "".join(s.text for s in steps) == tok.decode(ours)


def test_gelu_tanh_kernels_agree_across_backends_in_value_and_gradient():
    from nano_mlx.kernels import gelu_tanh as mlx_gelu_tanh
    from nano_torch.kernels import gelu_tanh as torch_gelu_tanh
    x = np.linspace(-10.0, 10.0, 40001, dtype=np.float32)
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_gelu_tanh(xt)
    yt.sum().backward()
    xm = mx.array(x)
    np.testing.assert_allclose(np.array(mlx_gelu_tanh(xm)), yt.detach().numpy(), rtol=0, atol=2e-6)
    np.testing.assert_allclose(np.array(mx.grad(lambda a: mlx_gelu_tanh(a).sum())(xm)), xt.grad.numpy(),
                               rtol=0, atol=1e-5)
    import mlx.nn as nn  # the form mlx-lm's gpt2 runs
    np.testing.assert_allclose(np.array(mlx_gelu_tanh(xm)), np.array(nn.gelu_approx(xm)), rtol=0, atol=2e-6)


def test_gelu_tanh_model_is_the_same_in_both_backends():
    from nano_mlx.model import GPT as MlxGPT
    from nano_torch.model import GPT as TorchGPT
    cfg = ModelConfig(**TINY, **GPT2)
    w = random_weights(cfg)
    x = np.random.default_rng(0).integers(0, V, (2, 24))
    with torch.no_grad():
        a = TorchGPT(cfg).load_numpy(w)(torch.from_numpy(x)).numpy()
    b = np.array(MlxGPT(cfg).load_numpy(w)(mx.array(x.astype(np.int32))))
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


# ---------------------------------------------------------------------------------------------- HF -> nano
def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


def foreign_gpt2(path, **kw):
    from transformers import GPT2Config, GPT2LMHeadModel
    conf = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                      eos_token_id=0, **kw)
    model = _randomize(GPT2LMHeadModel(conf))
    model.save_pretrained(path)
    return model


def foreign_llama(path, shard=None, dtype=None, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM
    conf = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0,
                       eos_token_id=0, **kw)
    model = _randomize(LlamaForCausalLM(conf))
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, **({"max_shard_size": shard} if shard else {}))
    return model


FOREIGN = {
    "gpt2": lambda p: foreign_gpt2(p),
    "gpt2-relu-untied-ninner": lambda p: foreign_gpt2(p, activation_function="relu", tie_word_embeddings=False,
                                                      n_inner=40, layer_norm_epsilon=1e-6),
    "llama-untied": lambda p: foreign_llama(p, rope_theta=500.0),
    "llama-tied-bias-sharded": lambda p: foreign_llama(p, tie_word_embeddings=True, attention_bias=True,
                                                       mlp_bias=True, shard="20KB"),
    "llama-bf16": lambda p: foreign_llama(p, dtype=torch.bfloat16),
    "qwen3": lambda p: _qwen3(p),
}


def _qwen3(path):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    conf = Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                       tie_word_embeddings=True)
    model = _randomize(Qwen3ForCausalLM(conf))
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("name", list(FOREIGN))
def test_checkpoints_transformers_wrote_import_with_the_same_logits(name, tmp_path):
    model = FOREIGN[name](tmp_path / "hf")
    if name.endswith("sharded"):
        assert (tmp_path / "hf" / hf.INDEX_FILE).is_file()
    cfg, w, tok, notes = hf.load_pretrained(tmp_path / "hf")
    assert tok is None and any("no tokenizer.json" in n for n in notes)
    ids = list(np.random.default_rng(1).integers(0, V, 20))
    with torch.no_grad():
        ref = model.float()(torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(nano_logits(cfg, w, ids) - ref).max() <= 1e-4
    assert cfg.emb_scale == 1.0  # no stock layout scales its embeddings
    if "untied" in name:
        assert not cfg.tie_embeddings
    if name == "llama-untied":
        assert cfg.rope_theta == 500.0 and cfg.kv_heads == 2 and cfg.seq_len == 64


@pytest.mark.parametrize("name", ["gpt2-gelu_tanh", "gpt2-sinusoidal", "llama-gqa-untied", "llama-mqa-bias",
                                  "qwen3-qk_norm"])
def test_export_import_export_is_identity(name, tok, tmp_path):
    cfg = ModelConfig(**TINY, **EXPORTS[name][0]).validate()
    export(cfg, random_weights(cfg), tok, tmp_path / "a")
    cfg2, w2, _, _ = hf.load_pretrained(tmp_path / "a", tokenizer=False)
    if cfg.pos != "sinusoidal":
        assert cfg2 == cfg
    export(cfg2, w2, tok, tmp_path / "b")
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (tmp_path / "a" / f).read_text() == (tmp_path / "b" / f).read_text()
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_import_with_the_tokenizer_keeps_ids_when_the_vocab_is_nanos(tok, tmp_path):
    cfg = ModelConfig(**TINY, **EXPORTS["llama-gqa-untied"][0]).validate()
    w = random_weights(cfg)
    export(cfg, w, tok, tmp_path / "a")
    cfg2, w2, tok2, _ = hf.load_pretrained(tmp_path / "a")
    assert tok2.encode(PROMPT) == tok.encode(PROMPT)
    assert all(np.array_equal(w[k], w2[k]) for k in w)


def test_foreign_model_with_its_own_token_ids_imports_with_rows_permuted(tok, tmp_path):
    """A gpt2 whose tokenizer.json numbers the tokens differently from nano (here: in reverse): nano's logit for its
    token i is HF's logit for order[i], and the prompt's logits match once both sides encode the same text."""
    from tokenizer.io import to_hf_dict
    model = foreign_gpt2(tmp_path / "hf", tie_word_embeddings=False)
    d = to_hf_dict(tok)
    n = len(d["model"]["vocab"])
    d["model"]["vocab"] = {s: n - 1 - i for s, i in d["model"]["vocab"].items()}
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(d, ensure_ascii=False))
    cfg, w, tok2, notes = hf.load_pretrained(tmp_path / "hf")
    assert any("reordered" in x for x in notes)
    ids = tok2.encode(PROMPT)[:20]
    hf_ids = [n - 1 - i if i < n else i for i in ids]
    with torch.no_grad():
        ref = model(torch.tensor([hf_ids])).logits.numpy()[0]
    order = np.array([n - 1 - i if i < n else i for i in range(tok2.vocab_size)])
    got = nano_logits(cfg, w, ids)
    assert np.abs(got[:, :tok2.vocab_size] - ref[:, order]).max() <= 1e-4


def test_rows_are_permuted_to_nano_ids():
    rows = hf.permutation([2, 0, 3], 5)
    assert rows.tolist() == [2, 0, 3, 1, 4]  # nano id i takes HF row order[i]; unused rows follow
    for bad in ([0, 0], [0, 7], list(range(6))):
        with pytest.raises(ValueError):
            hf.permutation(bad, 5)


def test_bf16_safetensors_are_widened_exactly(tmp_path):
    from safetensors.torch import save_file
    t = torch.randn(3, 5).to(torch.bfloat16)
    save_file({"x": t, "y": t.half()}, str(tmp_path / "m.safetensors"))
    got = hf.read_safetensors(tmp_path / "m.safetensors")
    assert np.array_equal(got["x"], t.float().numpy()) and got["x"].dtype == np.float32
    assert np.array_equal(got["y"], t.half().float().numpy())


# ---------------------------------------------------------------------------------------------- refused
def spec(base, **change):
    return {**base, **change}


REFUSED = {  # option -> (config, words the message must hold)
    "rnn": (dict(arch="rnn", pos="none"), "arch='rnn'"),
    "softcap": (spec(GPT2, logit_softcap=30.0), "logit_softcap"),
    "window": (spec(LLAMA, window=8), "window=8"),
    "partial-rope": (spec(LLAMA, rope_pct=0.5), "rope_pct=0.5"),
    "rope-scaling": (spec(LLAMA, rope_scaling={"type": "linear", "factor": 2.0}), "rope_scaling"),
    "relu2-in-llama": (spec(LLAMA, mlp="relu2"), "mlp='relu2'"),
    "gelu-in-llama": (spec(LLAMA, mlp="gelu"), "mlp='gelu'"),
    "layernorm-with-rope": (spec(LLAMA, norm="layernorm"), "norm='layernorm'"),
    "rmsnorm-with-learned": (spec(GPT2, norm="rmsnorm"), "norm='rmsnorm'"),
    "swiglu-with-learned": (spec(GPT2, mlp="swiglu"), "mlp='swiglu'"),
    "no-positions": (spec(GPT2, pos="none"), "pos='none'"),
    "gpt2-without-bias": (spec(GPT2, bias=False), "bias=False"),
    "gpt2-gqa": (spec(GPT2, n_kv_head=2), "n_kv_head=2"),
    "gpt2-qk_norm": (spec(GPT2, qk_norm=True), "qk_norm"),
    "gpt2-untied": (spec(GPT2, tie_embeddings=False), "tie_embeddings=False"),
    "qwen3-with-bias": (spec(LLAMA, qk_norm=True, bias=True), "bias=True"),
    "emb-scale-sinusoidal": (spec(GPT2, pos="sinusoidal", emb_scale=32 ** 0.5), "emb_scale=5.656854249492381"),
    "emb-scale-llama": (spec(LLAMA, emb_scale=2.0), "emb_scale=2.0"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_options_no_stock_type_expresses_are_one_line_errors(name, tok, tmp_path):
    spec, words = REFUSED[name]
    cfg = ModelConfig(**TINY, **spec).validate()
    with pytest.raises(ValueError) as e:
        export(cfg, init_weights(cfg), tok, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "nearest exportable" in msg
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing written, no temp dir


@pytest.mark.parametrize("change, words", [
    (dict(model_type="gpt_neo"), "model_type 'gpt_neo'"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "rope scaling 'yarn'"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(head_dim=16), "head_dim=16"),
    (dict(attention_bias=True), "attention_bias=True with mlp_bias=False"),
    (dict(layer_types=["sliding_attention", "full_attention"]), "sliding-window"),
])
def test_foreign_options_nano_cannot_represent_are_one_line_errors(change, words, tmp_path):
    foreign_llama(tmp_path / "hf")
    conf = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**conf, **change}))
    with pytest.raises(ValueError) as e:
        hf.load_pretrained(tmp_path / "hf")
    assert "\n" not in str(e.value) and words in str(e.value)


def test_foreign_tensors_nano_has_no_place_for_are_an_error(tmp_path):
    from safetensors.numpy import save_file
    foreign_gpt2(tmp_path / "hf")
    w = load_file(str(tmp_path / "hf" / "model.safetensors"))
    w["transformer.h.0.extra.weight"] = np.zeros(3, np.float32)
    save_file(w, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(ValueError, match="no place for"):
        hf.load_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        hf.load_pretrained(tmp_path / "hf")


# ---------------------------------------------------------------------------------------------- the CLI
def make_run(tmp_path, tok, spec=GPT2):
    cfg = ModelConfig(**TINY, **spec).validate()
    tok.save(tmp_path / "tok")
    meta = {"model_config": cfg.to_dict(), "train_config": {}, "loader_state": {}}
    ck.save_checkpoint(tmp_path / "run", 7, random_weights(cfg), {}, meta, tokenizer_dir=tmp_path / "tok")
    return tmp_path / "run"


def test_cli_exports_a_run_and_replaces_only_a_previous_export_with_force(tok, tmp_path, capsys):
    run = make_run(tmp_path, tok)
    out = tmp_path / "exported"
    res = subprocess.run([sys.executable, "-m", "nano_core.export", "--ckpt", str(run), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "gpt2" in lines[0] and "ckpt_0000007" in lines[0] and str(out) in lines[0]
    before = (out / "model.safetensors").read_bytes()

    with pytest.raises(SystemExit) as e:
        export_main(["--ckpt", str(run), "--out", str(out)])
    assert "previous export; add --force" in str(e.value.code) and "\n" not in str(e.value.code)
    (out / "keep.txt").write_text("mine")  # a file no export wrote: --force refuses too
    with pytest.raises(SystemExit) as e:
        export_main(["--ckpt", str(run), "--out", str(out), "--force"])
    assert "'keep.txt', which no export wrote" in str(e.value.code) and "\n" not in str(e.value.code)
    assert (out / "keep.txt").read_text() == "mine"  # refused: untouched
    (out / "keep.txt").unlink()

    export_main(["--ckpt", str(run / "ckpt_0000007"), "--out", str(out), "--force"])
    assert capsys.readouterr().out.count("\n") == 1
    assert (out / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left

    with pytest.raises(SystemExit) as e:  # --force never replaces a run dir
        export_main(["--ckpt", str(run), "--out", str(run), "--force"])
    assert "checkpoints" in str(e.value.code)
    (tmp_path / "empty").mkdir()
    export_main(["--ckpt", str(run), "--out", str(tmp_path / "empty")])  # an empty dir is fine
    assert (tmp_path / "empty" / "config.json").is_file()


def test_a_character_tokenizer_exports_the_model_alone_with_a_notice(shared_data, tmp_path):
    from tokenizer import CharTokenizer
    ctok = CharTokenizer.train([str(shared_data / "tinyshakespeare" / "input.txt")])
    cfg = ModelConfig(**{**TINY, "vocab_size": ctok.vocab_size}, **GPT2)
    notices = export(cfg, random_weights(cfg), ctok, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors",
                                                                    "nano_export.json"]
    assert len(notices) == 1 and "CharTokenizer" in notices[0]


def test_cli_refusal_of_an_unexportable_model_is_one_line(tok, tmp_path):
    run = make_run(tmp_path, tok, spec=spec(LLAMA, window=8))
    with pytest.raises(SystemExit) as e:
        export_main(["--ckpt", str(run), "--out", str(tmp_path / "x")])
    assert str(e.value.code).startswith("error: cannot export window=8") and "\n" not in str(e.value.code)
    assert not (tmp_path / "x").exists()
