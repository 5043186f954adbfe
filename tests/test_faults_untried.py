"""The faults the README promised and no test had tried (issue 23): a NaN once good checkpoints exist, a file system
that turns read-only in the middle of a run, and an mlx.launch rank killed mid-run. Each ends with the last good
checkpoint intact and named, and `--resume latest` continuing from it exactly as the uninterrupted run did.
A 1-layer model on 120 KB of TinyShakespeare at vocab 260, CPU, fp32 (where a resume is bit for bit)."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from nano_core import checkpoint as ck
from nano_core import metrics
from helpers import free_ports, rank_pid

REPO = Path(__file__).resolve().parents[1]
MICRO = {"n_layer": 1, "n_head": 2, "n_embd": 32, "seq_len": 32}


@pytest.fixture(params=["torch", "mlx"])
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def setup(shared_data, tmp_path_factory) -> tuple[Path, Path]:
    """(shard dir, model config file), made once for the module."""
    from nano_core.prepare import prepare

    root = tmp_path_factory.mktemp("untried")
    text = root / "ts.txt"
    text.write_text((shared_data / "tinyshakespeare" / "input.txt").read_text()[:120_000])
    prepare([text], root / "shards", vocab_size=260, num_workers=1, progress=False)
    (root / "micro.json").write_text(json.dumps(MICRO))
    return root / "shards", root / "micro.json"


def train_main(backend: str):
    return __import__(f"nano_{backend}.train", fromlist=["main"]).main


def args(setup, out: Path, **over) -> list[str]:
    data, config = setup
    opts = {"data": data, "config": config, "out": out, "batch-size": 4, "max-steps": 6, "log-every": 1,
            "eval-every": 0, "eval-steps": 1, "sample-every": 0, "sample-tokens": 1, "ckpt-every": 2, "keep": 5,
            "dtype": "fp32", "warmup-steps": 2, "lr": 3e-3, **over}
    return [x for k, v in opts.items() for x in (f"--{k}", str(v))]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in metrics.read_metrics(run) if "train_loss" in r}


_REFERENCE: dict = {}


def reference(backend: str, setup, tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted 6-step run, once per backend."""
    if backend not in _REFERENCE:
        out = tmp_path_factory.mktemp(f"ref-{backend}") / "run"
        train_main(backend)(args(setup, out))
        _REFERENCE[backend] = losses(out)
    return _REFERENCE[backend]


def one_error_line(capsys, fn) -> str:
    with pytest.raises(SystemExit) as info:
        fn()
    err = capsys.readouterr().err
    message = info.value.code if isinstance(info.value.code, str) else err.strip().splitlines()[-1]
    assert "Traceback" not in err and "\n" not in message.strip(), err
    return message


def test_a_nan_once_good_checkpoints_exist_resumes_from_the_last_good_one_named(backend, setup, tmp_path,
                                                                               tmp_path_factory, monkeypatch,
                                                                               capsys):
    cls = __import__(f"nano_{backend}.backend", fromlist=["Backend"]).Backend
    real = cls.make_train_step

    def poisoned(self, model, optimizer, *a, **k):  # the loss of step 5 turns NaN (checkpoints at 2 and 4 exist)
        step = real(self, model, optimizer, *a, **k)
        return lambda batch, lr, index, mask=None: step(batch, lr, index, mask=mask) * (
            float("nan") if index == 4 else 1.0)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(cls, "make_train_step", poisoned)
        message = one_error_line(capsys, lambda: train_main(backend)(args(setup, out)))
    assert "diverged" in message and "at step 5" in message and f"--resume {out / 'ckpt_0000004'}" in message
    train_main(backend)(["--resume", "latest", "--out", str(out)])
    assert f"resuming from {out / 'ckpt_0000004'} at step 4" in capsys.readouterr().out
    want = reference(backend, setup, tmp_path_factory)
    assert {s: losses(out)[s] for s in (5, 6)} == {s: want[s] for s in (5, 6)}  # the same run, bit for bit


def test_a_file_system_gone_read_only_mid_run_is_one_line_and_the_last_checkpoint_resumes(backend, setup, tmp_path,
                                                                                          tmp_path_factory,
                                                                                          monkeypatch, capsys):
    out = tmp_path / "run"
    root = str(out.resolve())
    first = out / "ckpt_0000002" / "meta.json"

    def read_only() -> bool:  # once the first checkpoint is published, every write under the run dir fails
        return first.is_file()

    def under(path) -> bool:
        try:
            return str(Path(os.fsdecode(path)).resolve()).startswith(root)
        except (TypeError, ValueError):
            return False

    def erofs(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_open, real_os_open, real_mkdir = open, os.open, os.mkdir
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def guarded_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and read_only() and under(file):
            erofs(file)
        return real_open(file, mode, *a, **k)

    def guarded_os_open(path, flags, *a, **k):
        if flags & writes and read_only() and under(path):
            erofs(path)
        return real_os_open(path, flags, *a, **k)

    def guarded_mkdir(path, *a, **k):
        if read_only() and under(path):
            erofs(path)
        return real_mkdir(path, *a, **k)

    with monkeypatch.context() as m:
        m.setattr("builtins.open", guarded_open)
        m.setattr(os, "open", guarded_os_open)
        m.setattr(os, "mkdir", guarded_mkdir)
        message = one_error_line(capsys, lambda: train_main(backend)(args(setup, out)))
    assert message.startswith("error: could not write") and "Read-only file system" in message, message
    assert "--resume latest" in message and str(out) in message
    assert [p.name for p in ck.list_checkpoints(out)] == ["ckpt_0000002"]
    ck.verify_checkpoint(out / "ckpt_0000002")
    assert not [p for p in out.iterdir() if p.name.startswith(ck.TMP_PREFIX)]  # no half checkpoint
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # no torn line
    assert max(r["step"] for r in records) == 2
    train_main(backend)(["--resume", "latest", "--out", str(out)])
    assert f"resuming from {out / 'ckpt_0000002'} at step 2" in capsys.readouterr().out
    want = reference(backend, setup, tmp_path_factory)
    assert {s: losses(out)[s] for s in range(3, 7)} == {s: want[s] for s in range(3, 7)}


# -- an mlx.launch rank killed mid-run, then resumed -------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's pid through /proc")
def test_an_mlx_launch_rank_killed_mid_run_leaves_a_checkpoint_that_resumes(setup, tmp_path):
    launch = [str(Path(sys.executable).parent / "mlx.launch"), "-n", "2", "--starting-port", str(free_ports(2)), "--",
              sys.executable, "-m", "nano_mlx.train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NANO_TEST_TAG": uuid.uuid4().hex,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    proc = subprocess.Popen(launch + args(setup, out, **{"max-steps": 100_000, "ckpt-every": 5}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not ck.list_checkpoints(out):  # a checkpoint published: the kill lands after good state exists
            assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        os.kill(rank_pid(env["NANO_TEST_TAG"], 1), signal.SIGKILL)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "error: rank 0 of 2 lost contact with the other ranks" in output, output[-3000:]
    last = ck.latest_checkpoint(out, notices=[])
    assert last is not None and not [p for p in out.iterdir() if p.name.startswith(ck.TMP_PREFIX)
                                     and p not in ck.orphaned_temp_dirs(out)]
    step = ck.verify_checkpoint(last)["step"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert records and all("step" in r for r in records)
    r = subprocess.run(launch + ["--resume", "latest", "--out", str(out), "--max-steps", str(step + 3)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=240)
    assert "Traceback" not in r.stdout + r.stderr and f"resuming from {last} at step {step}" in r.stdout + r.stderr, \
        (r.stdout + r.stderr)[-3000:]
    assert max(losses(out)) == step + 3
    assert re.search(r"ckpt_\d+", str(ck.latest_checkpoint(out, notices=[])))
