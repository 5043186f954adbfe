"""The nanochat layout: nano's nanochat block (--preset nanochat-*) leaves nano as a directory that transformers'
NanoChatForCausalLM and mlx-lm's nanochat run with nano's logits (fp32, <= 1e-4) and greedy tokens, comes back with
--init-from unchanged, and a NanoChat checkpoint transformers itself wrote imports with transformers' logits.
CPU, no network, tiny configs."""
import json
import os

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import EXPORT_PROMPT, greedy_in_three, shakespeare_tokenizer, torch_logits as nano_logits  # noqa: E402
import torch  # noqa: E402

from nano_core import hf  # noqa: E402
from nano_core.config import ModelConfig  # noqa: E402
from nano_core.export import export_model  # noqa: E402
from nano_core.hf_nanochat import NANOCHAT_MLX_FILE  # noqa: E402
from nano_core.init import init_weights  # noqa: E402
from nano_core.pretrained import load_init_from  # noqa: E402

mx.set_default_device(mx.cpu)

V = 300
NANOCHAT = dict(vocab_size=V, n_layer=2, n_head=4, n_embd=32, seq_len=32, mlp="relu2", norm="rmsnorm", pos="rope",
                bias=False, tie_embeddings=False, qk_norm=True, norm_params=False, emb_norm=True, logit_softcap=15.0)
SHAPES = {"mha": {}, "gqa-theta": dict(n_kv_head=2, rope_theta=500.0, mlp_hidden=48), "mqa": dict(n_kv_head=1)}
PROMPT = EXPORT_PROMPT


@pytest.fixture(scope="module")
def tok(shared_data):
    return shakespeare_tokenizer(shared_data, V)


def weights(cfg, seed=0, scale=4.0):
    """nano's init, scaled up (the head more): logits spread over the soft cap's range and attention far from
    uniform, so a mapping mistake (a RoPE sign, a q/k order) shows in the logits."""
    w = {k: (a * scale).astype(np.float32) for k, a in init_weights(cfg, seed).items()}
    w["lm_head.weight"] *= 10
    return w


def export(cfg, w, tok, out):
    notices = []
    export_model(cfg, w, tok, out, notices=notices.append)
    return notices


@pytest.mark.parametrize("shape", list(SHAPES))
def test_nanochat_export_gives_nanos_logits_in_transformers_and_mlx_lm(shape, tok, tmp_path):
    import mlx_lm
    from transformers import AutoModelForCausalLM
    cfg = ModelConfig(**NANOCHAT, **SHAPES[shape]).validate()
    assert hf.export_layout(cfg) == "nanochat"
    w = weights(cfg)
    assert export(cfg, w, tok, tmp_path / "out") == []
    conf = json.loads((tmp_path / "out" / "config.json").read_text())
    assert conf["model_type"] == "nanochat" and conf["final_logit_softcapping"] == 15.0
    ids = tok.encode(PROMPT)[:cfg.seq_len]
    ref = nano_logits(cfg, w, ids)
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()(torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(got - ref).max() <= 1e-4
    model, _ = mlx_lm.load(str(tmp_path / "out"))
    assert np.abs(np.array(model(mx.array([ids]))[0]) - ref).max() <= 1e-4
    assert np.abs(ref).max() > 5.0  # the logits are far from uniform: the comparison means something


def test_greedy_generation_is_the_same_in_nano_transformers_and_mlx_lm(tok, tmp_path):
    cfg = ModelConfig(**NANOCHAT, n_kv_head=2).validate()
    w = weights(cfg, seed=3, scale=8.0)
    export(cfg, w, tok, tmp_path / "out")
    ours, theirs, steps, _ = greedy_in_three(cfg, w, tok, tmp_path / "out")
    assert theirs == ours and [s.token for s in steps] == ours


def test_nanochat_export_imports_back_with_init_from_unchanged(tok, tmp_path):
    cfg = ModelConfig(**NANOCHAT, n_kv_head=2).validate()
    w = weights(cfg)
    export(cfg, w, tok, tmp_path / "a")
    init = load_init_from(str(tmp_path / "a"), log=lambda m: None)
    assert init.model_config == cfg and init.tokenizer.encode(PROMPT) == tok.encode(PROMPT)
    assert sorted(init.weights) == sorted(w) and all(np.array_equal(init.weights[k], w[k]) for k in w)
    export(init.model_config, init.weights, tok, tmp_path / "b")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_mlx_lm_names_alone_import_the_same_model(tok, tmp_path):
    """A directory holding only nanochat's own tensor names (what mlx-lm reads) imports as the transformers one."""
    cfg = ModelConfig(**NANOCHAT).validate()
    w = weights(cfg)
    export(cfg, w, tok, tmp_path / "a")
    for f in ("model.safetensors.index.json", "transformers.safetensors"):
        (tmp_path / "a" / f).unlink()
    (tmp_path / "a" / NANOCHAT_MLX_FILE).rename(tmp_path / "a" / "model.safetensors")
    cfg2, w2, _, _ = hf.load_pretrained(tmp_path / "a", tokenizer=False)
    assert cfg2 == cfg and all(np.array_equal(w2[k], w[k]) for k in w)


@pytest.mark.parametrize("kv,cap", [(2, 15.0), (4, None)])
def test_a_nanochat_checkpoint_transformers_wrote_imports_with_the_same_logits(kv, cap, tmp_path):
    from transformers import NanoChatConfig, NanoChatForCausalLM
    conf = NanoChatConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=kv, max_position_embeddings=64,
                          final_logit_softcapping=cap, rope_parameters={"rope_type": "default", "rope_theta": 300.0})
    model = NanoChatForCausalLM(conf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    model.eval().save_pretrained(tmp_path / "hf")
    cfg, w, _, _ = hf.load_pretrained(tmp_path / "hf", tokenizer=False)
    assert (cfg.kv_heads, cfg.logit_softcap, cfg.rope_theta, cfg.norm_eps) == (kv, cap, 300.0, 1e-6)
    ids = list(np.random.default_rng(1).integers(0, V, 20))
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits.numpy()[0]
    assert np.abs(nano_logits(cfg, w, ids) - ref).max() <= 1e-4


REFUSED = {  # change to the nanochat block -> words the one-line message must hold
    "softcap-30": (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    "no-softcap": (dict(logit_softcap=None), "logit_softcap=None"),
    "eps": (dict(norm_eps=1e-6), "norm_eps=1e-06"),
    "weighted-norms": (dict(norm_params=True), "norm_params=True"),
    "no-emb-norm": (dict(emb_norm=False), "emb_norm=False"),
    "no-qk-norm": (dict(qk_norm=False), "qk_norm=False"),
    "tied": (dict(tie_embeddings=True), "tie_embeddings=True"),
    "bias": (dict(bias=True), "bias=True"),
    "gelu": (dict(mlp="gelu"), "mlp='gelu'"),
    "partial-rope": (dict(rope_pct=0.5), "rope_pct=0.5"),
    "learned-positions": (dict(pos="learned"), "GPT-2 block"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_nanochat_cannot_hold_is_refused_in_one_line(name, tok, tmp_path):
    change, words = REFUSED[name]
    cfg = ModelConfig(**{**NANOCHAT, **change}).validate()
    with pytest.raises(ValueError) as e:
        export(cfg, init_weights(cfg), tok, tmp_path / "out")
    msg = str(e.value)
    assert msg.startswith("cannot export") and words in msg and "\n" not in msg
    assert not (tmp_path / "out").exists()


def test_the_nanochat_presets_export():
    for name in ("nanochat-3x192", "nanochat-6x384"):
        assert hf.export_layout(ModelConfig.from_preset(name)) == "nanochat"


def test_force_replaces_a_previous_export_and_never_another_directory(tok, tmp_path):
    cfg = ModelConfig(**NANOCHAT).validate()
    export(cfg, weights(cfg), tok, tmp_path / "out")
    export_model(cfg, weights(cfg, seed=1), tok, tmp_path / "out", force=True)  # a previous export: replaced
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (mine / "config.json").write_text("{}")
    (mine / "model.safetensors").write_text("not ours")
    with pytest.raises(ValueError, match="'thesis.txt', which no export wrote") as e:
        export_model(cfg, weights(cfg), tok, mine, force=True)
    assert "\n" not in str(e.value) and (mine / "thesis.txt").read_text() == "years of work"
    (mine / "nano_export.json").write_text(json.dumps({"files": ["../thesis.txt", "config.json"]}))
    with pytest.raises(ValueError, match="is not a nano export"):  # a marker naming paths outside is no marker
        export_model(cfg, weights(cfg), tok, mine, force=True)
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "model.safetensors", "nano_export.json",
                                                       "thesis.txt"]


def test_a_run_ends_with_its_export_command_or_with_why_it_has_none():
    from nano_core.report import next_steps

    line = next_steps(ModelConfig.from_preset("nanochat-3x192"), "runs/nc")
    assert line.startswith("next: `python -m nano_core.export --ckpt runs/nc --out exported/nc` (nanochat layout)")
    line = next_steps(ModelConfig.from_preset("modern-3x192"), "runs/m")
    assert line.startswith("export: not possible") and "nanochat-3x192" in line
    assert "nano_core.fuse" in next_steps(ModelConfig.from_preset("nanochat-3x192"), "runs/l", lora=True)

