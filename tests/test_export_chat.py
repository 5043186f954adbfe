"""Chat models leave nano whole: a checkpoint fine-tuned with --instruct-data exports nano's instruct template as
tokenizer_config.json's chat_template, and transformers' apply_chat_template and mlx-lm's tokenizer turn a
conversation into exactly the ids nano trained on (nano_core/instruct_rows.py encode_row), and a prompt into the ids
nano's generate feeds. A base model's export carries no template."""
import json

import numpy as np
import pytest

from nano_core import checkpoint as ck
from nano_core.config import ModelConfig
from nano_core.export import main as export_main
from nano_core.init import init_weights
from nano_core.instruct_rows import encode_row
from tokenizer import BPETokenizer

V = 300
CFG = dict(vocab_size=V, n_layer=1, n_head=2, n_embd=16, seq_len=256, pos="learned", norm="layernorm",
           mlp="gelu_tanh")
CONVERSATIONS = {
    "one-turn": [{"role": "user", "content": "What is a citizen?"},
                 {"role": "assistant", "content": "One who lives in a city."}],
    "system": [{"role": "system", "content": "You speak like Shakespeare."},
               {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Good morrow, friend!"}],
    "multi-turn": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"},
                   {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And times three?"},
                   {"role": "assistant", "content": " Twelve (leading space kept)."}],
    "two-systems-unicode": [{"role": "system", "content": "Rule one."}, {"role": "system", "content": "Rule two."},
                            {"role": "user", "content": "Say «bonjour» — ünïcödé"},
                            {"role": "assistant", "content": "bonjour ✓"}],
}


@pytest.fixture(scope="module")
def tok(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    return BPETokenizer.train([text], vocab_size=V, progress=False, num_workers=1)


def export_run(tmp_path, tok, name, train_config):
    cfg = ModelConfig(**CFG).validate()
    tok.save(tmp_path / f"{name}-tok")
    meta = {"model_config": cfg.to_dict(), "train_config": train_config, "loader_state": {}}
    ck.save_checkpoint(tmp_path / name, 3, init_weights(cfg), {}, meta, tokenizer_dir=tmp_path / f"{name}-tok")
    export_main(["--ckpt", str(tmp_path / name), "--out", str(tmp_path / f"{name}-hf")])
    return tmp_path / f"{name}-hf"


def ids_of(x):
    """apply_chat_template's ids whether it returns a list or an encoding dict."""
    return list(x["input_ids"] if hasattr(x, "keys") else x)


@pytest.fixture(scope="module")
def chat_export(tok, tmp_path_factory):
    return export_run(tmp_path_factory.mktemp("chat"), tok, "sft", {"instruct_data": "rows.jsonl"})


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_transformers_and_mlx_lm_render_conversations_to_the_ids_nano_trained_on(name, tok, chat_export):
    import mlx_lm
    from transformers import AutoTokenizer
    msgs = CONVERSATIONS[name]
    ids, mask = encode_row({"messages": msgs}, tok)
    htok = AutoTokenizer.from_pretrained(chat_export)
    assert ids_of(htok.apply_chat_template(msgs, tokenize=True)) == ids.tolist()
    _, mtok = mlx_lm.load(str(chat_export))
    assert ids_of(mtok.apply_chat_template(msgs, tokenize=True)) == ids.tolist()

    # a prompt: everything but the last answer, then "Assistant:" -- the ids before nano's last trained run
    answer = len(mask) - np.flatnonzero(~mask).max() - 1
    prompt = ids[:len(ids) - answer].tolist()
    assert ids_of(htok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)) == prompt
    assert ids_of(mtok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)) == prompt


def test_the_prompt_is_what_nanos_generate_feeds(tok, chat_export):
    from transformers import AutoTokenizer
    htok = AutoTokenizer.from_pretrained(chat_export)
    got = ids_of(htok.apply_chat_template([{"role": "user", "content": "Hi there"}], tokenize=True,
                                          add_generation_prompt=True))
    assert got == [tok.eot_id] + tok.encode("User: Hi there\n\nAssistant:")


def test_an_unknown_role_is_refused_by_the_template(chat_export):
    from transformers import AutoTokenizer
    htok = AutoTokenizer.from_pretrained(chat_export)
    with pytest.raises(Exception, match="roles are system, user and assistant, not tool"):
        htok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_a_base_model_exports_without_a_chat_template(tok, tmp_path):
    out = export_run(tmp_path, tok, "base", {})
    assert "chat_template" not in json.loads((out / "tokenizer_config.json").read_text())
    assert not list(out.glob("*.jinja"))
