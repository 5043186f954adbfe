"""Several processes, one run: what the loop needs to know about the launcher, written once for both backends.

nano has no launcher and no communication layer of its own. The engines users already have start the processes
and carry the gradients:

    torchrun --nproc-per-node N -m nano_torch.train ...          # DDP: gloo on CPU, NCCL on CUDA
    mlx.launch -n N -- python -m nano_mlx.train ...               # mx.distributed: ring (TCP/Thunderbolt), JACCL
    mlx.launch --hostfile hosts.json -- python -m nano_mlx.train  # several Macs (hostfile: mlx.distributed_config)

Each backend turns the launcher's environment into (rank, world size) in `Backend.init_distributed` and averages the
gradients (and the loss it returns) with the engine's own collective inside its train step. What stays here:

- who talks: `launched_rank()` reads the launcher's environment before any framework starts, so that only rank 0
  prints from the very first line;
- a bounded start: `Watchdog` ends a process that waits too long for its peers (an unreachable host, a peer that
  never started, a bad hostfile) with one line instead of a hang;
- agreement: every rank must take the same branch of the loop (stop, checkpoint, continue), or the next collective
  waits forever for the rank that left; `agree_to_stop` makes a local reason to stop (a signal, --max-time, whose
  clock differs per process) a decision of all ranks;
- a peer that dies: the engines raise at the next collective (gloo: "Connection closed by peer", the MLX ring:
  "connection to a peer was lost"); `lost_peer_message` turns that into one line.
"""
from __future__ import annotations

import os
import subprocess
import sys

# The environment each launcher sets for its processes: torchrun (RANK, WORLD_SIZE), mlx.launch's ring and JACCL
# backends (MLX_RANK + MLX_HOSTFILE / MLX_IBV_DEVICES), its NCCL backend (MLX_RANK, MLX_WORLD_SIZE) and mpirun.
RANK_VARS = ("RANK", "MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
DEFAULT_START_TIMEOUT = 300.0  # seconds for all ranks to find each other (--dist-timeout)


def launched_rank() -> int:
    """This process's rank as the launcher set it (0 when started alone). For deciding who prints before a backend
    exists; the backend's init_distributed is the authority once it has run."""
    for var in RANK_VARS:
        value = os.environ.get(var)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def launched() -> bool:
    """Whether a launcher (torchrun, mlx.launch, mpirun) started this process."""
    return any(var in os.environ for var in RANK_VARS)


def quiet_unless_rank0(log):
    """`log` on rank 0, a no-op on the other ranks (they would repeat every line N times)."""
    return log if launched_rank() == 0 else (lambda *args, **kwargs: None)


class Watchdog:
    """`with Watchdog(seconds, what):` -- if the block has not finished after `seconds`, print one line saying
    `what` did not happen and end the process. For calls that can block forever in native code (a rendezvous with
    a peer that is not there) while holding the GIL, so that neither a Python exception nor a Python thread (nor a
    signal handler) would ever run: the watchdog is a small child process, which prints the line and kills this one
    (exit status -9) unless the block finishes first."""

    CHILD = ("import os, signal, sys, time\n"
             "time.sleep(float(sys.argv[1]))\n"
             "if os.getppid() == int(sys.argv[3]):  # still our parent (never a reused pid)\n"
             "    sys.stderr.write(sys.argv[2] + '\\n'); sys.stderr.flush()\n"
             "    os.kill(int(sys.argv[3]), signal.SIGKILL)\n")

    def __init__(self, seconds: float, message: str):
        self.seconds = seconds
        self.message = f"error: {message} (waited {seconds:.0f} s; --dist-timeout sets the wait)"
        self._child = None

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self._child = subprocess.Popen([sys.executable, "-c", self.CHILD, str(self.seconds), self.message,
                                        str(os.getpid())], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self._child.kill()
        self._child.wait()
        return False


# The loop's stop codes, combined across ranks with a max: a signal on any rank stops everyone (with a checkpoint),
# the deadline of any rank ends everyone's run (with the final evaluation).
CONTINUE, DEADLINE, SIGNALLED = 0, 1, 2


def agree_to_stop(backend, deadline: bool, signalled: bool) -> tuple[bool, bool]:
    """(deadline, signalled) as all ranks will act on them: one small all-reduce per step, and only when there is
    more than one rank (a single process decides alone, as it always did)."""
    if backend.world_size == 1:
        return deadline, signalled
    code = backend.all_max(SIGNALLED if signalled else DEADLINE if deadline else CONTINUE)
    return code == DEADLINE or deadline, code == SIGNALLED


def is_lost_peer(error: BaseException) -> bool:
    """Whether an exception from a train step is an engine reporting a peer gone (not a bug in the step)."""
    text = str(error).lower()
    return any(s in text for s in ("connection closed by peer", "connection to a peer was lost", "connection reset",
                                   "broken pipe", "nccl", "gloo", "[ring]", "timed out"))


def lost_peer_cause(error: BaseException) -> BaseException | None:
    """The engine error in `error` or in what it interrupted: when a rank dies, the launcher signals the survivors
    while their own engine error may already be on its way up, and the signal's KeyboardInterrupt then carries that
    error as its __context__. The lost peer is the cause either way."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, RuntimeError) and is_lost_peer(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def lost_peer_message(rank: int, world_size: int, error: BaseException) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"rank {rank} of {world_size} lost contact with the other ranks ({first[:160]}); another rank has "
            f"probably died: see its output above. The last checkpoint is intact: rerun the same command with "
            f"--resume latest")


def world_change_notice(saved: int, now: int) -> str:
    return (f"notice: the checkpoint was written by {saved} process{'es' if saved > 1 else ''}, this run has {now}: "
            f"training continues from the same position in the data, but which windows make up each step changes "
            f"from here (resume on {saved} for an exact continuation)")
