"""A new user's first hour: the README's commands are quick and pass from a bare clone.

1. On Linux an MLX entry point restarts itself once with an installed OpenBLAS preloaded (MLX's CPU wheel otherwise
   multiplies on a ~30x slower reference BLAS) and says so in one line; never on import, never for PyTorch.
2. The test command passes in a bare clone: real-text excerpts in tests/fixtures/data stand in for ../shared/data,
   and what needs the whole corpus is skipped with its reason.
3. nano's tokenizer file is nano_tokenizer.json; tokenizer.json is the Hugging Face export (the name HF tools
   assume); directories saved before the rename still load, and hashes are unchanged.
4. What nano writes follows the user's umask (a checkpoint is not 0700 because mkdtemp made it so)."""
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nano_core import checkpoint as ck
from nano_core import host
from tokenizer import BPETokenizer, CharTokenizer, export_hf, load_tokenizer
from tokenizer.base import HF_TOKENIZER_FILE, LEGACY_TOKENIZER_FILE, TOKENIZER_FILE
from nano_io.files import atomic_write, follow_umask, umask

from helpers import plain_env

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
NOTICE = "notice: MLX's CPU backend uses OpenBLAS ("


def needs_openblas_preload():
    if not sys.platform.startswith("linux"):
        pytest.skip("the OpenBLAS preload is for MLX's Linux CPU wheel; nothing happens here")
    if not host.mlx_bundles_reference_blas():
        pytest.skip("the installed MLX is not the Linux CPU wheel with its reference BLAS (mlx-cpu)")
    if host.installed_openblas() is None:
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread); CI installs one")
    return host.installed_openblas()


# ---------------------------------------------------------------------------------------------- 1. OpenBLAS
@pytest.mark.parametrize("entry", ["nano_mlx.train", "nano_mlx.generate", "nano_mlx.eval"])
def test_mlx_entry_points_preload_an_installed_openblas_and_say_so_in_one_line(entry):
    lib = needs_openblas_preload()
    r = subprocess.run([sys.executable, "-m", entry, "--help"], capture_output=True, text=True, env=plain_env(),
                       timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith(NOTICE)]
    assert lines == [f"{NOTICE}{lib}), preloaded by nano (NANO_OPENBLAS=0 keeps MLX's own reference BLAS)"]
    assert "usage: python -m " + entry in r.stdout  # the same command ran, once


PROBE = ("import os, sys; from nano_core.host import use_openblas_for_mlx; use_openblas_for_mlx(); "
         "import mlx.core; from nano_core.host import loaded_blas; "
         "print(loaded_blas()); print(os.environ.get('LD_PRELOAD')); print(os.environ.get('NANO_OPENBLAS'))")


def test_the_restarted_process_runs_mlx_on_openblas_and_keeps_the_preload_from_its_children():
    lib = needs_openblas_preload()
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=plain_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    blas, preload, marker = r.stdout.splitlines()
    assert blas.startswith("OpenBLAS (") and (preload, marker) == ("None", "None")
    assert r.stderr.count(NOTICE) == 1 and lib in r.stderr
    # a user's own LD_PRELOAD entries survive the restart
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                       env=plain_env(LD_PRELOAD="libm.so.6"))
    assert r.stdout.splitlines()[:2] == [blas, "libm.so.6"]


def test_nano_openblas_0_keeps_mlxs_own_blas():
    needs_openblas_preload()
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120,
                       env=plain_env(NANO_OPENBLAS="0"))
    assert r.returncode == 0 and NOTICE not in r.stderr
    assert r.stdout.splitlines()[0].startswith("reference BLAS")


def test_importing_the_entry_points_restarts_nothing_and_pytorch_is_never_preloaded():
    code = ("import os, nano_mlx.train, nano_mlx.generate, nano_mlx.eval; print(os.environ.get('LD_PRELOAD'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=plain_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "None" and NOTICE not in r.stderr
    for entry in ("nano_torch.train", "nano_torch.generate", "nano_torch.eval"):
        src = (REPO / Path(*entry.split("."))).with_suffix(".py").read_text()
        assert "use_openblas_for_mlx" not in src, entry
    r = subprocess.run([sys.executable, "-m", "nano_torch.generate", "--help"], capture_output=True, text=True,
                       env=plain_env(), timeout=120, cwd=REPO)
    assert r.returncode == 0 and NOTICE not in r.stderr


def test_when_nano_restarts_and_when_it_does_not(monkeypatch):
    lib = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"
    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host, "mapped_libraries", lambda: {"/venv/mlx_cpu.libs/libblas-bd8a282c.so.3.10.0"})
    monkeypatch.setattr(host, "mlx_bundles_reference_blas", lambda: True)
    monkeypatch.setattr(host, "installed_openblas", lambda: lib)
    monkeypatch.setattr(host, "mlx_would_use_cuda", lambda argv: False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv(host.OPENBLAS_ENV, raising=False)
    argv = ["-m", "nano_mlx.train"]
    assert host.openblas_to_preload(argv) == lib
    with monkeypatch.context() as m:
        m.setenv(host.OPENBLAS_ENV, lib)  # already restarted once: never again
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setenv(host.OPENBLAS_ENV, "0")  # the user's opt-out
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setenv("LD_PRELOAD", "/opt/libopenblas.so.0")  # the user preloaded one
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setattr(host, "mapped_libraries", lambda: {"/usr/lib/libopenblasp-r0.3.21.so"})  # loaded already
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setattr(host, "installed_openblas", lambda: None)  # none installed: the backend's notice says how
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setattr(host, "mlx_bundles_reference_blas", lambda: False)  # an MLX built against another BLAS
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setattr(host, "mlx_would_use_cuda", lambda argv: True)  # MLX's CUDA build on an NVIDIA GPU
        assert host.openblas_to_preload(argv) is None
    with monkeypatch.context() as m:
        m.setattr(host.sys, "platform", "darwin")  # Accelerate
        assert host.openblas_to_preload(argv) is None


def test_device_cpu_keeps_mlx_on_the_cpu_even_with_its_cuda_build(monkeypatch):
    monkeypatch.setattr(host.glob, "glob", lambda pattern: [pattern])  # an mlx_cuda dist-info and a GPU everywhere
    assert host.mlx_would_use_cuda(["-m", "nano_mlx.train"])
    assert not host.mlx_would_use_cuda(["-m", "nano_mlx.train", "--device", "cpu"])
    assert not host.mlx_would_use_cuda(["-m", "nano_mlx.train", "--device=cpu"])
    monkeypatch.setattr(host.glob, "glob", lambda pattern: [])
    assert not host.mlx_would_use_cuda(["-m", "nano_mlx.train"])


# ---------------------------------------------------------------------------------------------- 2. bare clone
def test_fixture_data_is_small_licensed_and_laid_out_like_shared_data():
    data = FIXTURES / "data"
    files = sorted(p for p in data.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) <= 2_000_000
    manifest = (data / "MANIFEST.md").read_text(encoding="utf-8")
    for p in files:
        if p.name != "MANIFEST.md":
            rel = p.relative_to(data).as_posix()
            assert f"`{rel}` | {p.stat().st_size:,} |" in manifest, f"{rel} is not listed with its size"
    for licence in ("ODC-By 1.0", "MIT", "public domain", "CC BY-SA 3.0"):
        assert licence in manifest
    assert {p.parent.name for p in files} >= {"fineweb_edu", "tinyshakespeare", "gutenberg", "wikitext2", "hellaswag"}


BARE_SUBSET = ["tests/test_sources.py", "tests/test_data.py", "tests/test_first_hour.py::test_old_tokenizer_dirs_load"]


def test_the_test_command_passes_in_a_bare_clone(tmp_path):
    """The repository's files alone (no ../shared beside them): fixture data, full_data tests skipped by reason."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the repository's files from build output")
    clone = tmp_path / "clone" / "nano"  # nothing beside it: no ../shared
    for rel in listed.stdout.decode().split("\0"):
        if rel and (REPO / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, clone / rel)
    env = {**plain_env(), "PYTHONPATH": str(clone)}  # the clone's packages, not the editable install's
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *BARE_SUBSET],
                       cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
    skipped = [line for line in r.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("from ../shared/data, which is absent" in line for line in skipped), skipped


# ---------------------------------------------------------------------------------------------- 3. file names
def test_nanos_own_file_and_the_hf_export_never_share_a_name(tmp_path):
    import tokenizers  # the bench extra's HF tokenizers, which [all] installs

    assert TOKENIZER_FILE == "nano_tokenizer.json" and HF_TOKENIZER_FILE == "tokenizer.json" != TOKENIZER_FILE
    tok = BPETokenizer.train(["builtin"], vocab_size=300, progress=False, num_workers=1)
    path = tok.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == [TOKENIZER_FILE, HF_TOKENIZER_FILE]
    assert json.loads(path.read_text())["format"] == "nano-bpe"
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tok" / HF_TOKENIZER_FILE))  # what every HF tool does
    text = "The quick brown fox -- 1234 jumps; it's over the lazy dog.\n"
    assert hf.encode(text).ids == tok.encode(text)
    assert load_tokenizer(tmp_path / "tok").hash == tok.hash
    assert export_hf(tok, tmp_path / "hf") == tmp_path / "hf" / HF_TOKENIZER_FILE
    assert not (tmp_path / "hf" / TOKENIZER_FILE).exists()
    # a character tokenizer has no HF form: nano's file only
    ct = CharTokenizer("abc \n")
    ct.save(tmp_path / "char")
    assert [p.name for p in (tmp_path / "char").iterdir()] == [TOKENIZER_FILE]
    # an HF tokenizer.json alone is not nano's file: one line that says what it is
    with pytest.raises(ValueError, match="Hugging Face tokenizer.json: nano reads its own nano_tokenizer.json"):
        load_tokenizer(tmp_path / "hf")


def test_old_tokenizer_dirs_load():
    """tests/fixtures/legacy_tokenizer/tokenizer.json was written by tok.save before the rename (nano's format under
    the HF name). It loads, and the hash is what manifests and checkpoints recorded then."""
    old = FIXTURES / "legacy_tokenizer"
    assert [p.name for p in old.iterdir()] == [LEGACY_TOKENIZER_FILE]
    tok = load_tokenizer(old)
    assert tok.merges == [(32, 116), (104, 101), (257, 256)]
    assert tok.hash == "3223f0f970616d3fdc90537fec35cb28ecd21e255025c6be334ca858794e5199"
    assert BPETokenizer(tok.merges, "gpt4", ("<|endoftext|>", "<|pad|>")).hash == tok.hash
    assert CharTokenizer("abc \n").hash == "8ff9e7120c3e0aa01e1d3cd25850f38797d3e919e720f0f82a266622de221793"


# ---------------------------------------------------------------------------------------------- 4. umask
@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_checkpoint_dir_is_0755_and_its_files_0644_under_umask_022(tmp_path, umask_022):
    assert umask() == 0o022 and umask() == 0o022  # read without changing it
    tok_dir = tmp_path / "tok"
    BPETokenizer.train(["builtin"], vocab_size=260, progress=False, num_workers=1).save(tok_dir)
    tok_dir.chmod(0o700)  # a private source (what mkdtemp made before) must not make the copy private
    for f in tok_dir.iterdir():
        f.chmod(0o600)
    weights = {"wte.weight": np.ones((4, 2), np.float32)}
    optim = {"wte.weight.exp_avg": np.zeros((4, 2), np.float32), "step": 1}
    meta = {"model_config": {"n_layer": 1}, "train_config": {}, "loader_state": {"epoch": 0, "pos": 0}}
    path = ck.save_checkpoint(tmp_path / "run", 3, weights, optim, meta, tokenizer_dir=tok_dir)
    assert mode(path) == 0o755 and mode(path / "tokenizer") == 0o755
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "optimizer.safetensors", "meta.json", "checksums.json",
                                       TOKENIZER_FILE, HF_TOKENIZER_FILE}
    assert {p.relative_to(path).as_posix(): oct(mode(p)) for p in files} == \
           {p.relative_to(path).as_posix(): "0o644" for p in files}
    ck.verify_checkpoint(path)


def test_atomic_writes_and_follow_umask_give_the_usual_modes(tmp_path, umask_022):
    assert mode(atomic_write(tmp_path / "a.json", "{}")) == 0o644
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x").write_text("x")
    (d / "run.sh").write_text("#!/bin/sh\n")
    (d / "run.sh").chmod(0o700)
    for p in (d, d / "sub", d / "sub" / "x"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    follow_umask(d)
    assert (mode(d), mode(d / "sub"), mode(d / "sub" / "x"), mode(d / "run.sh")) == (0o755, 0o755, 0o644, 0o755)
