"""Training on several processes with the engines users already have: torchrun (DDP over gloo here) and mlx.launch
(mx.distributed's ring over TCP), every rank on 127.0.0.1 with OMP_NUM_THREADS=1.

What is proved, for each backend, through the real launchers:
- 2 processes with a per-process batch b give the per-step losses of 1 process with batch 2b on the same windows
  (<= 1e-5 relative over 10 steps: the only difference is the order of the floating-point additions);
- only rank 0 writes: one record per step in metrics.jsonl, one sample per sample step, the checkpoints;
- a 2-process checkpoint resumes exactly (the same losses) in 2 processes, and in 1 process with a notice, the
  global batch kept (gradient accumulation 2) and the same windows, so the losses agree within the same 1e-5;
- a rank killed with SIGKILL ends the run within a bounded time: the other rank says in one line that it lost
  contact, and the launcher reports a failed rank;
- a signal to rank 1 alone stops both ranks at the same step, with rank 0's checkpoint.
And without launching: the loader's global position across world sizes, the global batch, the one-line errors
(MPS with gloo, a hostfile that is not JSON, a peer that never comes, instruction data on several processes).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from nano_core import metrics
from nano_core.cli import TrainConfig
from nano_core.data import ShardLoader
from nano_core.distributed import lost_peer_cause
from nano_core.plan import grad_accum_steps
from nano_core.run import check_distributed
from helpers import make_dir, unique_shards
from helpers import free_ports, plain_env, rank_pid
from helpers import micro_setup, train_args, train_main

pytestmark = pytest.mark.e2e  # trains or runs commands end to end: outside the fast inner loop

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 10


def launcher(backend: str, n: int) -> list[str]:
    """The engine's own launcher, as a user types it (from this venv)."""
    if backend == "torch":
        return [str(BIN / "torchrun"), "--nproc-per-node", str(n), "--master-addr", "127.0.0.1", "--master-port",
                str(free_ports()), "-m", "nano_torch.train"]
    # mlx.launch listens on starting-port + rank: n free ports in a row
    return [str(BIN / "mlx.launch"), "-n", str(n), "--starting-port", str(free_ports(n)), "--", sys.executable, "-m",
            "nano_mlx.train"]


def launch_env(tag: str = "") -> dict:
    return plain_env(OMP_NUM_THREADS="1", NANO_TEST_TAG=tag or uuid.uuid4().hex, PYTHONUNBUFFERED="1")


def launch(backend: str, args: list[str], n: int = 2, timeout: float = 240) -> subprocess.CompletedProcess:
    r = subprocess.run(launcher(backend, n) + args, capture_output=True, text=True, env=launch_env(), cwd=REPO,
                       timeout=timeout)
    assert r.returncode == 0 and "Traceback" not in r.stderr + r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def readable(output: str) -> str:
    """A launch's output without the progress bars (for assertion messages)."""
    lines = output.replace("\r", "\n").splitlines()
    return "\n".join(ln for ln in lines if ln.strip() and not ln.lstrip().startswith("train "))[-6000:]


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in metrics.read_metrics(run) if "train_loss" in r}


def close(a: dict, b: dict, steps, rel: float = 1e-5) -> bool:
    return all(abs(a[s] - b[s]) <= rel * abs(b[s]) for s in steps)


def args_for(shared_data: Path, out: Path, batch: int, **over) -> list[str]:
    data, config = micro_setup(shared_data)
    return train_args(data, config, out, **{"batch-size": batch, "max-steps": STEPS, "ckpt-every": 5,
                                            "eval-every": 5, "sample-every": 5, **over})


_RUNS: dict = {}


def two_rank_run(backend: str, shared_data: Path, tmp_root: Path) -> Path:
    """10 steps on 2 processes of batch 4 (checkpoints at 5 and 10), once per backend."""
    if backend not in _RUNS:
        out = tmp_root / f"{backend}-2ranks"
        r = launch(backend, args_for(shared_data, out, 4))
        _RUNS[backend] = (out, r.stdout + r.stderr)
    return _RUNS[backend][0]


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


# --------------------------------------------------------------------------------------------- through the launchers
@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_two_processes_give_the_losses_of_one_process_with_twice_the_batch(backend, shared_data, tmp_root):
    two = two_rank_run(backend, shared_data, tmp_root)
    one = tmp_root / f"{backend}-1rank"
    train_main(backend)(args_for(shared_data, one, 8))
    a, b = losses(two), losses(one)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert close(a, b, range(1, STEPS + 1)), (a, b)
    assert a[STEPS] < a[1] - 0.2  # and it trains
    meta = json.loads((two / "ckpt_0000010" / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["tokens_seen"] == STEPS * 8 * 64  # the global batch: 2 x 4 x 64
    assert meta["plan"]["total_batch_tokens"] == 512  # recorded in the plan: a resume keeps the global batch


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_only_rank_0_writes(backend, shared_data, tmp_root):
    run = two_rank_run(backend, shared_data, tmp_root)
    output = _RUNS[backend][1]
    records = metrics.read_metrics(run)
    steps = [r["step"] for r in records if "train_loss" in r]
    assert steps == list(range(1, STEPS + 1))  # each step once: a second writer would double them
    assert [r["step"] for r in records if "val_loss" in r] == [5, 10]
    assert (run / "samples.txt").read_text().count("--- step ") == 2
    assert sorted(p.name for p in run.glob("ckpt_*")) == ["ckpt_0000005", "ckpt_0000010"]
    assert output.count("done at step 10") == 1 and output.count("nano " + backend + " | device") == 1
    assert "x2 processes" in output  # the start-up line names the world
    assert not list(run.glob(".tmp*"))  # no half-written checkpoint left by a second writer


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_two_process_checkpoint_resumes_exactly_on_two_and_with_a_notice_on_one(backend, shared_data, tmp_root):
    full = two_rank_run(backend, shared_data, tmp_root)
    expected = losses(full)
    two = tmp_root / f"{backend}-resume2"
    r = launch(backend, args_for(shared_data, two, 4) + ["--resume", str(full / "ckpt_0000005")])
    again = losses(two)
    assert sorted(again) == list(range(6, STEPS + 1))
    assert all(again[s] == expected[s] for s in again), (again, expected)  # the same steps, bit for bit
    assert "notice: the checkpoint was written by" not in r.stdout + r.stderr

    one = tmp_root / f"{backend}-resume1"
    train_main(backend)(args_for(shared_data, one, 4) + ["--resume", str(full / "ckpt_0000005")])
    meta = json.loads((one / "ckpt_0000010" / "meta.json").read_text())
    assert meta["world_size"] == 1 and meta["grad_accum"] == 2  # the global batch is kept: 512 tokens
    moved = losses(one)
    assert sorted(moved) == list(range(6, STEPS + 1))
    assert close(moved, expected, range(6, STEPS + 1)), (moved, expected)  # the same windows in each step


def test_resuming_on_another_world_size_says_so(shared_data, tmp_root, capsys):
    full = two_rank_run("torch", shared_data, tmp_root)
    out = tmp_root / "torch-notice"
    train_main("torch")(args_for(shared_data, out, 4, **{"max-steps": 6}) + ["--resume", str(full / "ckpt_0000005")])
    said = capsys.readouterr().out
    assert ("notice: the checkpoint was written by 2 processes, this run has 1: training continues from the same "
            "position in the data") in said


def _start_long_run(backend: str, shared_data: Path, out: Path) -> tuple[subprocess.Popen, str]:
    tag = uuid.uuid4().hex
    args = args_for(shared_data, out, 4, **{"max-steps": 100_000, "ckpt-every": 20, "eval-every": 0,
                                            "sample-every": 0, "log-every": 1})
    proc = subprocess.Popen(launcher(backend, 2) + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=launch_env(tag), cwd=REPO, start_new_session=True)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").is_file() or not losses(out):  # training has started on both ranks
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    return proc, tag


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, float]:
    t0 = time.time()
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:  # ranks in a session of their own may outlive the launcher and hold its pipe open: never wait forever
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            output = "(its ranks outlived the launcher, holding its output open)"
        raise AssertionError(f"the run did not end within {timeout} s: {output[-3000:]}")
    return proc.returncode, output, time.time() - t0


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_killed_rank_ends_the_run_with_an_error_not_a_hang(backend, shared_data, tmp_root):
    out = tmp_root / f"{backend}-killed"
    proc, tag = _start_long_run(backend, shared_data, out)
    try:
        os.kill(rank_pid(tag, 1), signal.SIGKILL)
        code, output, took = _finish(proc, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "error: rank 0 of 2 lost contact with the other ranks" in output, readable(output)
    assert "Traceback" not in output.split("error: rank 0")[0].split("lost contact")[0]
    if backend == "torch":
        assert code != 0  # torchrun fails when a worker does
    else:
        # mlx.launch itself exits 0 whatever its ranks do; it reports each failed rank's code (1, ours, or -15:
        # its own SIGTERM, when that lands after our line and before the interpreter has finished exiting)
        assert re.search(r"Node with rank 0 exited with code (1|-15)\b", output), readable(output)


def test_a_signal_to_one_rank_stops_both_at_the_same_step_with_a_checkpoint(shared_data, tmp_root):
    out = tmp_root / "torch-signalled"
    proc, tag = _start_long_run("torch", shared_data, out)
    try:
        os.kill(rank_pid(tag, 1), signal.SIGTERM)
        code, output, _ = _finish(proc, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code == 0, readable(output)
    assert "interrupted (a signal to another process): saved" in output
    ckpts = sorted(out.glob("ckpt_*"))
    meta = json.loads((ckpts[-1] / "meta.json").read_text())
    assert meta["step"] == max(losses(out)) and meta["world_size"] == 2


# --------------------------------------------------------------------------------------------- without launching
def test_a_launcher_signal_during_an_engine_error_still_reports_the_lost_peer():
    """When a rank dies the launcher signals the survivors, whose engine error may be on its way up already: the
    KeyboardInterrupt then carries it as __context__ and the one line must still say a peer was lost."""
    def interrupted_during(error):
        try:
            try:
                raise error
            finally:
                raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            return e

    ring = RuntimeError("[ring] Too many send/recv errors")
    assert lost_peer_cause(interrupted_during(ring)) is ring
    assert lost_peer_cause(ring) is ring
    assert lost_peer_cause(interrupted_during(RuntimeError("shape mismatch in matmul"))) is None  # a bug stays a bug
    assert lost_peer_cause(KeyboardInterrupt()) is None  # a plain Ctrl-C is not a lost peer


def test_loader_state_moves_between_world_sizes_at_the_same_global_position(tmp_path):
    make_dir(tmp_path, unique_shards([3000, 2500, 4100]), vocab_size=20000)
    two = [ShardLoader(tmp_path, 4, 32, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        for x in two:
            x.next_batch()
    state = json.loads(json.dumps(two[0].state_dict()))  # rank 0's, as the checkpoint holds it
    nxt = sorted(int(w) for x in two for w in x.next_batch()[:, 0])  # what the 2 ranks read next
    one = ShardLoader(tmp_path, 8, 32, seed=3)
    assert one.load_state_dict(state) is True  # says the world changed
    assert sorted(int(w) for w in one.next_batch()[:, 0]) == nxt  # the same 8 windows, in another grouping
    resumed = ShardLoader(tmp_path, 4, 32, seed=3, rank=1, world_size=2)
    assert resumed.load_state_dict(state) is False  # rank 0's state serves rank 1: same world, exact
    reference = ShardLoader(tmp_path, 4, 32, seed=3, rank=1, world_size=2)
    expected = [reference.next_batch() for _ in range(6)][-1]  # rank 1's 6th batch, uninterrupted
    assert np.array_equal(resumed.next_batch(), expected)
    # three ranks from two: the rest of the epoch once, split three ways (its last windows mod 3 dropped)
    single = ShardLoader(tmp_path, 1, 32, seed=3)
    order = [int(single.next_batch()[0, 0]) for _ in range(single.rank_windows_per_epoch)]
    three = [ShardLoader(tmp_path, 1, 32, seed=3, rank=r, world_size=3) for r in range(3)]
    for x in three:
        assert x.load_state_dict(state) is True
    seen = [int(x.next_batch()[0, 0]) for x in three for _ in range(x.rank_windows_per_epoch)]
    kept = 40 + 3 * ((len(order) - 40) // 3)
    assert sorted(seen) == sorted(order[40:kept])


def test_the_global_batch_sets_the_accumulation_per_process():
    assert grad_accum_steps(2048, 4, 64, world_size=1) == (2048, 8)
    assert grad_accum_steps(2048, 4, 64, world_size=2) == (2048, 4)
    assert grad_accum_steps(2048, 4, 64, world_size=8) == (2048, 1)
    with pytest.raises(ValueError, match=r"not a multiple of batch-size x seq-len x 3 processes = 768"):
        grad_accum_steps(2048, 4, 64, world_size=3)
    assert grad_accum_steps(None, 4, 64, world_size=2) == (512, 1)  # the default: one micro-batch per process


def test_instruction_data_on_several_processes_is_a_one_line_error():
    with pytest.raises(ValueError, match="--instruct-data trains in one process"):
        check_distributed(TrainConfig(instruct_data="rows.jsonl"), 2)


def test_pytorch_on_mps_with_several_processes_says_what_to_use(monkeypatch):
    from nano_torch.backend import Backend

    backend = Backend(device="cpu", dtype="fp32")
    backend.device = "mps"  # what --device mps resolves to on a Mac; gloo cannot carry its tensors
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="PyTorch cannot all-reduce MPS tensors.*mlx.launch"):
        backend.init_distributed(timeout=5)


def _alone(args: list[str], env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def test_a_hostfile_that_is_not_json_is_a_one_line_error(shared_data, tmp_path):
    bad = tmp_path / "hosts.json"
    bad.write_text("mac1 mac2\n")
    data, config = micro_setup(shared_data)
    r = _alone(["-m", "nano_mlx.train", *train_args(data, config, tmp_path / "run")],
               launch_env() | {"MLX_RANK": "0", "MLX_HOSTFILE": str(bad)})
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not start mx.distributed from the hostfile {bad}")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_a_peer_that_never_comes_is_an_error_within_the_timeout(backend, shared_data, tmp_path):
    data, config = micro_setup(shared_data)
    if backend == "torch":  # rank 0 of 2 with nobody else: the rendezvous waits for rank 1
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_ports())}
    else:  # rank 1 of a ring whose rank 0 is nowhere (a host that does not answer)
        hosts = tmp_path / "hosts.json"
        hosts.write_text(json.dumps([[f"127.0.0.1:{free_ports()}"], [f"127.0.0.1:{free_ports()}"]]))
        env = {"MLX_RANK": "0", "MLX_HOSTFILE": str(hosts)}
    t0 = time.time()
    r = _alone(["-m", f"nano_{backend}.train", *train_args(data, config, tmp_path / "run"), "--dist-timeout", "8"],
               launch_env() | env)
    took = time.time() - t0
    assert r.returncode != 0, r.stderr[-2000:]  # killed by the watchdog: no Python code runs in a stuck rendezvous
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank ") and "(waited 8 s; --dist-timeout sets the wait)" in last, r.stderr[-2000:]
    assert took < 60
