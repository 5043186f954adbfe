"""Every path only a Mac takes, run here by simulation: the device's capabilities are faked where the framework
allows it (meta tensors stand in for MPS ones, torch's own capability tables decide; MLX's Metal queries are
replaced by stand-ins; macOS's fcntl and sys.platform are faked), so these fail on Linux CI when a Mac branch breaks.
The Mac self-check (benchmarks/mac_check.py) runs here on the CPU backends."""
import fcntl
import importlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.utils._foreach_utils as foreach_utils
from packaging.requirements import Requirement

from nano_core import host
from nano_core import data_cache
from nano_core.cli import TrainConfig
from nano_core.metrics import ASSUMED_MFU
from nano_core.config import ModelConfig
from nano_core.init import init_weights
from nano_core.report import summary_line
from nano_io import dirs, files

REPO = Path(__file__).resolve().parents[1]
TORCH_OPTIMIZER = importlib.import_module("torch.optim.optimizer")  # torch.optim deletes the attribute of that name


# ----------------------------------------------------------------------------- PyTorch on MPS
def simulated_mps_backend(monkeypatch):
    """nano_torch's Backend as it is on a Mac (device "mps"), its tensors on `meta`: a device that, like mps, has
    no foreach kernels in torch's own table. MPS has fused AdamW kernels (torch's table again), meta has none, so
    meta is added to that table for the simulation."""
    from nano_torch.backend import Backend

    fused = TORCH_OPTIMIZER._get_fused_kernels_supported_devices
    monkeypatch.setattr(TORCH_OPTIMIZER, "_get_fused_kernels_supported_devices", lambda: fused() + ["meta"])
    b = Backend(device="cpu", dtype="fp32")
    b.device, b.torch_device, b.memory_label = "mps", torch.device("meta"), "MPS driver memory"
    return b


def test_torch_tables_say_mps_has_fused_adamw_but_no_foreach_api():
    """The facts the simulation stands on, read from the installed torch (a new torch that changes them fails here)."""
    assert not foreach_utils._device_has_foreach_support(torch.device("mps"))
    assert not foreach_utils._device_has_foreach_support(torch.device("meta"))
    assert "mps" in foreach_utils._get_fused_kernels_supported_devices()


@pytest.mark.parametrize("optimizer, variants", [("adamw", {}), ("muon", {}),
                                                 ("muon", dict(muon_ns="polar", normuon=True, cautious_wd=True)),
                                                 ("muon", dict(embed_lr=0.09, head_lr=0.009))])  # the recipes
def test_a_whole_mps_train_step_runs_where_the_foreach_api_is_missing(monkeypatch, optimizer, variants):
    """`clip_grad_norm_(..., foreach=True)` raised on mps at the first step: the step (clipping, AdamW or Muon, with
    and without its variants, with the recipes' group learning rates) must run on a device without foreach
    kernels."""
    b = simulated_mps_backend(monkeypatch)
    cfg = ModelConfig.from_preset("modern-3x192", vocab_size=256, seq_len=16, n_layer=1)
    model = b.build_model(cfg, init_weights(cfg, seed=0))
    assert next(model.parameters()).device.type == "meta"
    opt = b.build_optimizer(model, 1e-3, optimizer=optimizer, **variants)
    if optimizer == "muon":
        b.set_momentum(opt, 0.9)
    step = b.make_train_step(model, opt, grad_accum=2, grad_clip=1.0, seed=0)
    loss = step(np.zeros((4, 17), dtype=np.int32), 1e-3, 0)
    assert loss.shape == () and loss.device.type == "meta"


def test_mps_batches_are_copied_synchronously_and_cuda_ones_asynchronously(monkeypatch):
    """A non-blocking copy from unpinned numpy memory may read freed memory on MPS (PyTorch #139550, #189690)."""
    b = simulated_mps_backend(monkeypatch)
    calls = []
    real_to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    b.to_device(np.zeros((2, 3), dtype=np.int32))
    b.device = "cuda"
    b.to_device(np.zeros((2, 3), dtype=np.int32))
    assert calls == [False, True]


def test_mps_memory_is_the_largest_driver_allocation_read_and_is_labelled_so(monkeypatch):
    b = simulated_mps_backend(monkeypatch)
    reads = iter([5 * 2**30, 9 * 2**30, 7 * 2**30])
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: next(reads))
    seen = [b.peak_memory() for _ in range(3)]
    assert [s[0] for s in seen] == [5 * 2**30, 9 * 2**30, 9 * 2**30]
    assert "not a true peak" in seen[-1][1]
    b.reset_peak_memory()
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 2**30)
    assert b.peak_memory()[0] == 2**30
    line = summary_line(3, {"peak_memory_gb": 9.0, "memory_label": b.memory_label}, 1.0, "runs/x")
    assert "MPS driver memory 9.00 GB" in line and "peak memory" not in line


def test_pytorch_on_mps_keeps_fp32_unless_asked():
    from nano_torch.backend import pick_dtype

    assert pick_dtype("auto", "mps")[0] == "fp32"
    assert pick_dtype("bf16", "mps")[0] == "bf16"


# ----------------------------------------------------------------------------- MLX on the Metal GPU
def simulated_mlx_gpu(monkeypatch, with_device_info: bool):
    """nano_mlx's Backend as on a Mac, with MLX's Metal queries replaced: the recommended working set is 48 GiB."""
    import mlx.core as mx

    from nano_mlx.backend import Backend

    info = {"max_recommended_working_set_size": 48 * 2**30, "architecture": "applegpu_g15s"}
    if with_device_info:
        monkeypatch.setattr(mx, "device_info", lambda *a: dict(info), raising=False)
    else:  # MLX < 0.30.4 (macOS 13 installs 0.29.3): only mx.metal.device_info exists
        monkeypatch.delattr(mx, "device_info", raising=False)
    monkeypatch.setattr(mx.metal, "device_info", lambda: dict(info))
    limits = {}
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: limits.setdefault("wired", n))
    monkeypatch.setattr(mx, "set_cache_limit", lambda n: limits.setdefault("cache", n))
    b = Backend(device="cpu", dtype="fp32")
    b.device = "gpu"
    return b, limits


@pytest.mark.parametrize("with_device_info", [True, False], ids=["mlx>=0.30.4", "mlx-0.29"])
def test_mlx_gpu_start_up_wires_memory_with_and_without_mx_device_info(monkeypatch, with_device_info):
    b, limits = simulated_mlx_gpu(monkeypatch, with_device_info)
    assert b.set_memory_limit(None) is None
    assert limits == {"wired": 48 * 2**30, "cache": 12 * 2**30}


def test_pyproject_requires_the_mlx_that_has_every_api_nano_calls():
    """0.29 is the floor whose wheels (stubs inspected) hold every MLX call nano makes except mx.device_info, which
    nano_mlx.backend.gpu_info reads through a fallback (the test above)."""
    reqs = optional_requirements()
    mlx = [r for r in reqs["mlx"] if r.name == "mlx"]
    assert mlx and all(str(r.specifier) == ">=0.29" for r in mlx)


@pytest.mark.parametrize("brand, bf16", [("Apple M1", False), ("Apple M1 Max", False), ("Apple M2 Ultra", False),
                                         ("Apple M3", True), ("Apple M3 Max", True), ("Apple M4 Pro", True),
                                         ("Apple M5", True), ("AMD EPYC", False), ("", False)])
def test_mlx_picks_bf16_only_on_gpus_with_bf16_hardware(brand, bf16):
    from nano_mlx.backend import pick_dtype

    assert host.apple_gpu_has_bf16(brand) is bf16
    assert pick_dtype("auto", "gpu", brand=brand)[0] == ("bf16" if bf16 else "fp32")
    assert pick_dtype("auto", "cpu", brand=brand)[0] == "fp32"


def test_compare_reports_both_dtypes_on_a_mac_and_fp32_elsewhere():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from compare import parse_dtypes
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert parse_dtypes("auto", platform="darwin") == ["fp32", "bf16"]
    assert parse_dtypes("auto", platform="linux") == ["fp32"]
    assert parse_dtypes("bf16,fp32,bf16") == ["bf16", "fp32"]
    with pytest.raises(ValueError, match="--dtype"):
        parse_dtypes("fp16")


# ----------------------------------------------------------------------------- the no-argument run's data
@pytest.mark.parametrize("rate", [25_000, 60_000])
def test_the_no_argument_download_holds_the_whole_budget(monkeypatch, tmp_path, rate):
    """At an M2 Pro's or an M3 Max's rate the hour must not run out of data (20k documents ended the run after
    about 40 or 17 minutes): the download is one pass of the budget at the expected rate."""
    monkeypatch.setenv("NANO_CACHE", str(tmp_path))
    monkeypatch.setattr(data_cache, "hub_reachable", lambda: True)
    asked = {}
    monkeypatch.setattr(data_cache, "prepare", lambda **kw: asked.update(kw))
    config = TrainConfig(max_time=3600.0, preset="modern-6x384")
    cfg = data_cache.resolve_model_config(config, config.vocab_size)
    peak = rate * cfg.estimate_flops() / ASSUMED_MFU  # the peak at which the estimate gives `rate`
    out = data_cache.resolve_data(config, log=lambda *a: None, peak_flops=lambda: peak)
    docs = asked["max_docs"]
    assert docs * data_cache.HUB_TOKENS_PER_DOC >= 3600 * rate
    assert docs <= data_cache.HUB_MAX_DOCS and docs % data_cache.HUB_DOCS_STEP == 0
    assert f"fineweb-edu-{docs // 1000}k" in out.name  # a smaller earlier download is not reused for it


def test_a_download_without_a_time_budget_keeps_the_small_default():
    assert data_cache.hub_documents(None, 50_000) == data_cache.HUB_MIN_DOCS
    assert data_cache.hub_documents(600, 100) == data_cache.HUB_MIN_DOCS
    assert data_cache.hub_documents(36_000, 1e6) == data_cache.HUB_MAX_DOCS


# ----------------------------------------------------------------------------- checkpoints on macOS
def fake_macos(monkeypatch, full_fsync_fails: bool = False):
    synced = {"full": 0, "fsync": 0}

    def fake_fcntl(fd, cmd, *args):
        assert cmd == 51
        if full_fsync_fails:
            raise OSError("F_FULLFSYNC not supported by this file system")
        synced["full"] += 1

    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(fcntl, "F_FULLFSYNC", 51, raising=False)  # its value in macOS's <sys/fcntl.h>
    monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    monkeypatch.setattr(os, "fsync", lambda fd: synced.__setitem__("fsync", synced["fsync"] + 1))
    return synced


def test_files_and_checkpoint_dirs_reach_the_drive_on_macos_with_f_fullfsync(monkeypatch, tmp_path):
    synced = fake_macos(monkeypatch)
    files.atomic_write(tmp_path / "a.json", "{}")
    assert synced == {"full": 1, "fsync": 0}
    ckpt = tmp_path / "step_000001"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"x")
    (ckpt / "meta.json").write_text("{}")
    dirs.sync_tree(ckpt)
    assert synced == {"full": 4, "fsync": 0}  # two files and the directory


def test_a_volume_that_refuses_f_fullfsync_gets_fsync(monkeypatch, tmp_path):
    synced = fake_macos(monkeypatch, full_fsync_fails=True)
    files.atomic_write(tmp_path / "a.json", "{}")
    assert synced == {"full": 0, "fsync": 1}


# ----------------------------------------------------------------------------- installing on a Mac
def optional_requirements() -> dict[str, list[Requirement]]:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return {k: [Requirement(r) for r in v] for k, v in extras.items()}


def resolved(extra: str, sys_platform: str, machine: str) -> set[str]:
    env = {"sys_platform": sys_platform, "platform_machine": machine, "platform_system": sys_platform.title()}
    return {r.name for r in optional_requirements()[extra] if r.marker is None or r.marker.evaluate(env)}


def test_install_markers_give_each_kind_of_machine_only_what_has_wheels_there():
    assert resolved("mlx", "darwin", "arm64") == {"mlx", "mlx-lm"}
    assert resolved("torch", "darwin", "arm64") == {"torch"}
    assert resolved("mlx", "darwin", "x86_64") == set()  # MLX has no Intel-Mac wheel (nor one for Rosetta)
    assert resolved("torch", "darwin", "x86_64") == set()  # PyTorch's last Intel-Mac wheel is 2.2.2 < 2.5
    assert resolved("mlx", "linux", "x86_64") == {"mlx", "mlx-lm"}
    assert resolved("torch", "linux", "x86_64") == {"torch"}
    cpu = [r for r in optional_requirements()["mlx"] if r.name == "mlx" and "cpu" in r.extras]
    assert cpu and cpu[0].marker.evaluate({"sys_platform": "linux", "platform_machine": "x86_64"})


@pytest.mark.e2e
@pytest.mark.parametrize("package, framework", [("nano_torch", "torch"), ("nano_mlx", "mlx")])
def test_a_backend_without_its_framework_says_so_in_one_line(tmp_path, package, framework):
    """An Intel Mac installs neither framework: the training command must say so, not print a traceback."""
    fake = tmp_path / framework
    fake.mkdir()
    (fake / "__init__.py").write_text(f"raise ImportError(\"No module named '{framework}'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "NANO_OPENBLAS": "0"}
    proc = subprocess.run([sys.executable, "-m", f"{package}.train", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "pip install" in lines[0], proc.stderr


def test_the_missing_framework_line_on_an_intel_mac_names_the_way_out():
    with pytest.raises(ImportError, match="no wheel >= 2.5 for Intel Macs"):
        host.missing_framework("torch", ImportError("x"), machine="x86_64", platform_name="darwin")
    with pytest.raises(ImportError, match="no wheel for Intel Macs"):
        host.missing_framework("mlx", ImportError("x"), machine="x86_64", platform_name="darwin")


# ----------------------------------------------------------------------------- the self-check
@pytest.mark.e2e
def test_the_mac_self_check_runs_on_this_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mac_check.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "mac_check.json").read_text())
    assert report["backends"] == ["mlx-cpu", "torch-cpu"]
    for dtype in ("fp32", "bf16"):
        assert set(report["compare"][dtype]["backends"]) == {"mlx-cpu", "torch-cpu"}
    assert report["compare"]["fp32"]["parity"]["pairs"]["torch-cpu"]["max_rel_diff"] < 1e-5
    assert report["resume"]["mlx"]["ok"] and report["resume"]["torch"]["ok"]
    text = (out / "mac_check.md").read_text()
    assert "| bf16 | torch-cpu |" in text and "| torch | True |" in text
