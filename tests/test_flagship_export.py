"""Issue 21's "done when", on a short run: `python -m nano_torch.train` / `python -m nano_mlx.train` with the
default recipe (no model named) and with --preset nanochat-3x192 on real text, then `python -m nano_core.export` on
the run, gives a directory that transformers' AutoModelForCausalLM and mlx_lm.load run with nano's logits (<= 1e-4)
and nano's greedy tokens."""
import os
import subprocess
import sys

os.environ.setdefault("MLX_ENABLE_TF32", "0")

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from nano_core.checkpoint import checkpoint_tokenizer_dir, load_checkpoint  # noqa: E402
from nano_core.config import ModelConfig  # noqa: E402
from nano_core.generate import generate  # noqa: E402
from nano_core.recipes import RECIPES  # noqa: E402
from nano_core.settings import MAX_STEPS_ENV  # noqa: E402
from nano_torch.backend import Backend  # noqa: E402
from tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

mx.set_default_device(mx.cpu)
PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def run(args, env):
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


# The no-argument command's model (the device's recipe, shrunk to a few steps by nano_core.settings.MAX_STEPS_ENV
# and a short context) and the nanochat preset: each must leave nano.
MODELS = {"default-recipe": ([], "qwen3", RECIPES["cpu-10min"].preset),
          "nanochat-3x192": (["--preset", "nanochat-3x192"], "nanochat", "nanochat-3x192")}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_short_run_exports_to_transformers_and_mlx_lm_with_nanos_logits(backend, model, shared_data, tmp_path):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler
    from transformers import AutoModelForCausalLM
    flags, layout, preset = MODELS[model]
    env = {**os.environ, "NANO_CACHE": str(tmp_path / "cache"), "MLX_ENABLE_TF32": "0", MAX_STEPS_ENV: "4"}
    trained = run([f"nano_{backend}.train", *flags, "--source",
         str(shared_data / "tinyshakespeare" / "input.txt"), "--vocab-size", "512", "--seq-len", "64",
         "--batch-size", "2", "--eval-every", "0", "--eval-steps", "1", "--sample-every", "0",
         "--sample-tokens", "4", "--dtype", "fp32", "--out", str(tmp_path / "run")], env)
    # the run ends with the command that exports it
    assert f"next: `python -m nano_core.export --ckpt {tmp_path / 'run'} --out exported/run` ({layout} layout)" \
        in trained.stdout
    out = run(["nano_core.export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "hf")], env).stdout
    assert f"as {layout}" in out

    weights, _, meta = load_checkpoint(tmp_path / "run")
    cfg = ModelConfig.from_dict(meta["model_config"])
    assert cfg == ModelConfig.from_preset(preset, vocab_size=cfg.vocab_size, seq_len=64)
    tok = load_tokenizer(checkpoint_tokenizer_dir(meta["path"]))
    ids = tok.encode(PROMPT)[:32]
    be = Backend(device="cpu", dtype="fp32")
    model = be.build_model(cfg, weights)
    with be.inference(model):
        ref = model(torch.tensor([ids])).float().numpy()[0]
    with torch.no_grad():
        hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        assert np.abs(hf_model(torch.tensor([ids])).logits.numpy()[0] - ref).max() <= 1e-4
    mlx_model, mtok = mlx_lm.load(str(tmp_path / "hf"))
    assert np.abs(np.array(mlx_model(mx.array([ids]))[0]) - ref).max() <= 1e-4

    n = 8
    ours = generate(be, model, ids, n, temperature=0.0, stop_id=None)
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    assert theirs[0, len(ids):].tolist() == ours
    steps = mlx_lm.stream_generate(mlx_model, mtok, ids, max_tokens=n, sampler=make_sampler(temp=0.0))
    got = [s.token for s in steps]
    assert got == ours[:len(got)] and len(got) >= 1  # mlx-lm stops early only at <|endoftext|>
