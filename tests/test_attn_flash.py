"""attn_impl='flash' (flash-attn on CUDA) cannot run on a CPU-only machine, nor with MLX: what is tested is that
asking for it gives a one-line error that says what to do instead."""
import pytest
import torch

from nano_core.config import ModelConfig
from nano_mlx import model as mlx_model
from nano_torch import model as torch_model
from nano_torch.model import GPT


def test_flash_without_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch_model, "flash_available", lambda: False)
    with pytest.raises(ValueError, match="flash_attn package.*attn_impl='sdpa'"):
        GPT(ModelConfig.from_preset("tiny", n_layer=1), attn_impl="flash")


def test_flash_off_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch_model, "flash_available", lambda: True)  # as if installed: the device check fires
    model = GPT(ModelConfig.from_preset("tiny", n_layer=1, vocab_size=64), attn_impl="flash").init_weights(0)
    with pytest.raises(ValueError, match="CUDA only.*attn_impl='sdpa'"):
        model(torch.zeros(1, 8, dtype=torch.long))


def test_flash_with_mlx_is_a_clear_error():
    with pytest.raises(ValueError, match="flash_attn package.*PyTorch on CUDA.*attn_impl='sdpa'"):
        mlx_model.GPT(ModelConfig.from_preset("tiny", n_layer=1), attn_impl="flash")
