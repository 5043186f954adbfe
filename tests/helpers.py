"""Helpers shared by test modules (not a test module: pytest collects nothing here). Fixtures live in conftest.py;
the plain functions and constants several test modules use live here, so that no test module imports another
(tests/test_layout.py checks it).

- the model variants both backends test (one table: a variant added here is checked in MLX and in PyTorch alike);
- the backend contract's tiny model and real-text batches;
- shard directories made by hand;
- short training runs end to end on real shards, memoized so that each backend's reference run happens once per
  session;
- a child's environment without nano's preload and CI's settings; benchmark scripts loaded as modules.
"""
from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from nano_core import host, metrics
from nano_core.shards import write_shard

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

# ----------------------------------------------------------------------------- model variants (test_model_*.py)
SMALL = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, seq_len=24)
VARIANTS = {
    "learned-gelu": {},
    "learned-gelu-tanh": dict(mlp="gelu_tanh"),
    "sinusoidal-relu-mqa": dict(pos="sinusoidal", mlp="relu", n_kv_head=1),
    "sinusoidal-x-sqrt-d": dict(pos="sinusoidal", mlp="relu", emb_scale=SMALL["n_embd"] ** 0.5),  # Vaswani's
    "rope-swiglu-gqa": dict(pos="rope", mlp="swiglu", norm="rmsnorm", n_kv_head=2, bias=False,
                            tie_embeddings=False, qk_norm=True),
    "rope-partial-yarn": dict(pos="rope", rope_pct=0.5, rope_scaling={"type": "yarn", "factor": 4.0,
                                                                     "original_max_len": 12}),
    "rope-ntk": dict(pos="rope", rope_scaling={"type": "ntk", "factor": 2.0}),
    "nopos-relu2-softcap": dict(pos="none", mlp="relu2", logit_softcap=5.0),
    "sliding-SL-rope-gqa": dict(pos="rope", window=5, window_pattern="SL", n_kv_head=2),
    "nanochat-block": dict(pos="rope", mlp="relu2", norm="rmsnorm", qk_norm=True, norm_params=False, emb_norm=True,
                           bias=False, tie_embeddings=False, logit_softcap=15.0),
    "layernorm-paramfree-embnorm": dict(norm_params=False, emb_norm=True),
    "rnn-tanh": dict(arch="rnn", pos="none"),
    "rnn-slide": dict(arch="rnn", pos="none", rnn_act="slide"),
    "rnn-emb-scale": dict(arch="rnn", pos="none", emb_scale=2.0),  # the RNN shares the embedding path
}
GPT_VARIANTS = [k for k in VARIANTS if not k.startswith("rnn")]

# ----------------------------------------------------------------------------- the backend contract (test_backend.py)
BACKEND_CFG = dict(vocab_size=256, n_layer=2, n_head=4, n_embd=32, seq_len=32)


def backend_class(name: str):
    return importlib.import_module(f"nano_{name}.backend").Backend


def real_batch(shared_data, rows=4, T=32, offset=0) -> np.ndarray:
    """(rows, T+1) int32 windows of TinyShakespeare bytes (ids < 256)."""
    text = (shared_data / "tinyshakespeare" / "input.txt").read_bytes()[offset:offset + rows * (T + 1)]
    return np.frombuffer(text, dtype=np.uint8).astype(np.int32).reshape(rows, T + 1)


# ----------------------------------------------------------------------------- shard directories (test_data.py)
def make_dir(tmp_path, shards, vocab_size=None, dtype=None):
    """A prepared-looking directory: shard_00000 (val), shard_00001.. (train), manifest.json when vocab_size."""
    for i, toks in enumerate(shards):
        write_shard(tmp_path / f"shard_{i:05d}.bin", toks, dtype=dtype)
    if vocab_size is not None:
        manifest = {"vocab_size": vocab_size, "complete": True,
                    "shards": [{"file": f"shard_{i:05d}.bin", "split": "val" if i == 0 else "train",
                                "tokens": len(t)} for i, t in enumerate(shards)]}
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def unique_shards(lengths):
    """Shards whose token at global position p is p (uint32): a window's first token names its start."""
    out, base = [], 0
    for n in lengths:
        out.append(np.arange(base, base + n, dtype=np.uint32))
        base += n
    return out


# ----------------------------------------------------------------------------- training runs (test_train.py and others)
MICRO = {"n_layer": 2, "n_head": 2, "n_embd": 64, "seq_len": 64}
_RUNS: dict = {}


def micro_setup(shared_data: Path) -> tuple[Path, Path]:
    """(shard dir, model config file): FineWeb-Edu jsonl at vocab 512, prepared once per session."""
    if "setup" not in _RUNS:
        from nano_core.prepare import prepare

        root = Path(tempfile.mkdtemp(prefix="nano-train-tests-"))
        atexit.register(shutil.rmtree, root, True)
        prepare([str(shared_data / "fineweb_edu" / "sample-10BT-281docs.jsonl")], root / "shards", vocab_size=512,
                val_tokens=32768, progress=False)
        (root / "micro.json").write_text(json.dumps(MICRO))
        _RUNS["setup"] = (root / "shards", root / "micro.json")
    return _RUNS["setup"]


def train_args(data: Path, config: Path, out: Path, **over) -> list[str]:
    opts = {"data": data, "config": config, "out": out, "batch-size": 4, "max-steps": 8, "log-every": 1,
            "eval-every": 4, "eval-steps": 2, "sample-every": 4, "sample-tokens": 8, "ckpt-every": 4, "keep": 5,
            "dtype": "fp32", "warmup-steps": 2, "lr": 3e-3, **over}
    return [x for k, v in opts.items() if v is not None for x in (f"--{k}", str(v))]


def train_main(backend: str):
    if backend == "torch":
        from nano_torch.train import main
    else:
        from nano_mlx.train import main
    return main


def reference_run(backend: str, shared_data: Path) -> Path:
    """An uninterrupted 8-step run (checkpoints at 4 and 8), once per session and backend."""
    key = ("run", backend)
    if key not in _RUNS:
        data, config = micro_setup(shared_data)
        out = Path(tempfile.mkdtemp(prefix=f"nano-{backend}-ref-")) / "run"
        atexit.register(shutil.rmtree, out.parent, True)
        train_main(backend)(train_args(data, config, out))
        _RUNS[key] = out
    return _RUNS[key]


def losses(run_dir: Path, key: str = "train_loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in metrics.read_metrics(run_dir) if key in r}


# ----------------------------------------------------------------------------- children and scripts
def plain_env(**extra) -> dict:
    """This environment without LD_PRELOAD, nano's re-run marker and CI's demand for ../shared, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", host.OPENBLAS_ENV, "NANO_REQUIRE_FULL_DATA")}
    return {**env, **extra}


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (its functions and constants, without running it). The scripts
    import their shared harness as `harness`, as they do when run as `python benchmarks/NAME.py`."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(fn, match: str):
    """fn() raises a ValueError matching `match`, in one line (the tests of nano_core/muon.py's refusals)."""
    with pytest.raises(ValueError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def orthogonal_pair(rng, m: int, n: int):
    """Two matrices with orthonormal columns, (m, k) and (n, k), k = min(m, n): U and V of a chosen SVD."""
    k = min(m, n)
    return np.linalg.qr(rng.standard_normal((m, k)))[0], np.linalg.qr(rng.standard_normal((n, k)))[0]


def free_ports(n: int = 1) -> int:
    """p with p .. p + n - 1 free on 127.0.0.1, below the ephemeral range (the benchmarks' own finder)."""
    return load_benchmark("harness").free_ports(n)


def rank_pid(tag: str, rank: int, timeout: float = 120) -> int:
    """The pid of the training process of `rank` in the launch tagged `tag` (NANO_TEST_TAG in its environment;
    Linux /proc). nano's re-run to preload OpenBLAS is an exec: the same pid before and after."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                env = dict(kv.split("=", 1) for kv in (proc / "environ").read_text().split("\0") if "=" in kv)
                cmd = (proc / "cmdline").read_text()
            except (OSError, ValueError):
                continue
            if env.get("NANO_TEST_TAG") == tag and ".train" in cmd and \
                    str(rank) in (env.get("RANK"), env.get("MLX_RANK")):
                return int(proc.name)
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never started")


EXPORT_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


def greedy_in_three(cfg, weights: dict, tok, out: Path, n: int = 8):
    """An export in `out` of (cfg, weights) generating greedily from the first 16 tokens of EXPORT_PROMPT: (nano's
    tokens, transformers' tokens, mlx-lm's stream steps, the exported HF tokenizer). nano's own run gives n tokens and
    the HF tokenizer encodes the prompt to the same ids (asserted here); the callers compare the three."""
    import mlx_lm
    import torch
    from mlx_lm.sample_utils import make_sampler
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nano_core.generate import generate
    from nano_torch.backend import Backend

    ids = tok.encode(EXPORT_PROMPT)[:16]
    be = Backend(device="cpu", dtype="fp32")
    ours = generate(be, be.build_model(cfg, weights), ids, n, temperature=0.0, stop_id=tok.eot_id)
    assert len(ours) == n
    htok = AutoTokenizer.from_pretrained(out)
    assert htok.encode(EXPORT_PROMPT)[:16] == ids
    with torch.no_grad():  # the files are float32
        theirs = AutoModelForCausalLM.from_pretrained(out).eval().generate(
            torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids):].tolist()
    model, mtok = mlx_lm.load(str(out))
    steps = list(mlx_lm.stream_generate(model, mtok, ids, max_tokens=n, sampler=make_sampler(temp=0.0)))
    return ours, theirs, steps, htok


def shakespeare_tokenizer(shared_data: Path, vocab_size: int):
    """A small BPE trained on TinyShakespeare's first 200k characters: the export tests' tokenizer."""
    from tokenizer import BPETokenizer

    text = (shared_data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    return BPETokenizer.train([text], vocab_size=vocab_size, progress=False, num_workers=1)


def torch_logits(cfg, weights, ids) -> np.ndarray:
    """nano's PyTorch logits (fp32, CPU) for one row of token ids: the reference the export tests compare with."""
    import torch

    from nano_torch.backend import Backend

    be = Backend(device="cpu", dtype="fp32")
    model = be.build_model(cfg, weights)
    with be.inference(model):
        return model(torch.tensor([ids])).float().numpy()[0]


# ----------------------------------------------------------------------------- torch threads
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for a whole test module that imports this fixture (autouse there). Tiny matmuls: torch's 2
    threads fighting whatever else runs on a 2-core machine made 10 steps take 9 s instead of 0.1 s. One thread
    changes no result here (fp32 CPU kernels of these sizes don't split reductions)."""
    import torch  # here, not at the top: most test modules that use these helpers never load torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
