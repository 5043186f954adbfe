"""nano_core/init.py's --zero-init-proj: only the residual output projections start at zero, every other weight is
the draw it would be without; both backends' blocks are then the identity at step 0; the train flag reaches the
initializer and is refused where it cannot apply (--init-from, a resume that started otherwise)."""
import mlx.core as mx
import numpy as np
import pytest
import torch

from nano_core import trainer
from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_mlx.model import GPT as MlxGPT
from nano_torch.model import GPT as TorchGPT
from helpers import micro_setup, reference_run, train_args, train_main

CFG = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_embd=32, seq_len=16, pos="rope", mlp="swiglu",
                  norm="rmsnorm", qk_norm=True, bias=False, tie_embeddings=False)
PROJ = ("attn.wo.weight", "mlp.proj.weight")


def test_zero_proj_zeroes_the_projections_and_leaves_every_other_draw_as_it_was():
    plain, zero = init_weights(CFG, 3), init_weights(CFG, 3, zero_proj=True)
    assert plain.keys() == zero.keys()
    projections = [n for n in plain if n.endswith(PROJ)]
    assert len(projections) == 2 * CFG.n_layer
    for name in plain:
        if name in projections:
            assert not zero[name].any() and plain[name].std() > 0
        else:
            assert np.array_equal(plain[name], zero[name]), name


def _logits(framework: str, weights: dict, ids: np.ndarray) -> np.ndarray:
    if framework == "torch":
        with torch.no_grad():
            return TorchGPT(CFG).load_numpy(weights)(torch.from_numpy(ids).long()).float().numpy()
    return np.array(MlxGPT(CFG).load_numpy(weights)(mx.array(ids)))


@pytest.mark.parametrize("framework", ["torch", "mlx"])
def test_with_zero_projections_every_block_starts_as_the_identity(framework):
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, CFG.seq_len))
    weights = init_weights(CFG, 0, zero_proj=True)
    inside = (".attn.wq.", ".attn.wk.", ".attn.wv.", ".mlp.fc.", ".mlp.gate.")
    shaken = {n: (w * 3.0 + 0.1 if any(k in n for k in inside) else w)
              for n, w in weights.items()}  # what the blocks compute inside changes ...
    a, b = _logits(framework, weights, ids), _logits(framework, shaken, ids)
    assert np.allclose(a, b, atol=1e-6)  # ... and nothing of it reaches the residual stream
    plain = _logits(framework, init_weights(CFG, 0), ids)
    assert not np.allclose(a, plain, atol=1e-4)  # (the default init does let the blocks through)


def test_the_train_flag_reaches_the_initializer(shared_data, tmp_path, monkeypatch):
    seen = []
    real = trainer.init_weights
    monkeypatch.setattr(trainer, "init_weights", lambda cfg, seed, zero=False: seen.append(zero) or real(cfg, seed,
                                                                                                         zero))
    data, config = micro_setup(shared_data)
    train_main("torch")(train_args(data, config, tmp_path / "run", **{"max-steps": 1, "eval-every": 0,
                                                                      "sample-every": 0}) + ["--zero-init-proj"])
    assert seen == [True]


def test_zero_init_proj_with_init_from_is_one_line(shared_data, tmp_path, capsys):
    data, config = micro_setup(shared_data)
    run = reference_run("torch", shared_data)
    capsys.readouterr()  # that run's own output
    args = train_args(data, None, tmp_path / "run", **{"init-from": run}) + ["--zero-init-proj"]
    with pytest.raises(SystemExit) as e:
        train_main("torch")(args)
    assert str(e.value.code) == ("error: --zero-init-proj sets a fresh model's starting weights and --init-from "
                                 "brings trained ones; drop one of them")
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "run").exists()
