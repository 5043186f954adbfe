"""How a training run stops other than at its last step, and what the command then says.

- StopFlag: the first SIGINT (Ctrl-C) or SIGTERM asks the loop to checkpoint and exit at the next step;
- StoppedAtOnce: a second signal stops at once, the last checkpoint intact (exit 130);
- LostPeer: another process of a multi-process run stopped answering;
- fail: bad input or a failed write is one line on stderr and exit 1, also under a launcher.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

from nano_core.checkpoint import latest_checkpoint
from nano_core.distributed import launched


class StopFlag:
    """SIGINT (Ctrl-C) and SIGTERM (kill, a job scheduler, a container stop) set a flag that the loop checks between
    steps: it then checkpoints and exits cleanly. A second signal interrupts at once (the previous handlers are
    back after the first)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: str | None = None  # the name of the signal that asked
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name
        self.restore()

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class LostPeer(Exception):
    """Another process of a multi-process run stopped answering (it died, or its machine went away)."""


class StoppedAtOnce(KeyboardInterrupt):
    """A signal arrived after the first one had asked for a checkpoint and an exit (Ctrl-C twice; under a launcher,
    its SIGTERM to every rank when one fails): the process stops where it is, with the last checkpoint intact."""

    def __init__(self, run_dir: Path, rank: int, world: int):
        super().__init__(str(run_dir))
        self.run_dir, self.rank, self.world = run_dir, rank, world

    def message(self) -> str:
        said = "interrupted again: stopped at once, without a new checkpoint"
        if self.rank > 0:  # checkpoints are rank 0's, perhaps on another machine: it says where they are
            return f"rank {self.rank} of {self.world}: {said}"
        if latest_checkpoint(self.run_dir, notices=[]) is None:
            return f"{said}; no checkpoint had been written yet: rerun the same command to start again"
        who = f"rank 0 of {self.world}: " if self.world > 1 else ""
        return f"{who}{said}; the last checkpoint is intact: continue with --resume latest --out {self.run_dir}"


def fail(message: str):
    """Exit 1 with a one-line error. Under a launcher the line is printed at once: sys.exit(message) prints only at
    interpreter shutdown, and the SIGTERM that torchrun and mlx.launch send to the other ranks when one fails would
    end the process before that, with the line unsaid."""
    if launched():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's SIGTERM must not cut the line short
        print(message, file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(message)


def raise_interrupt(signum, frame):
    """A signal handler that turns SIGTERM into Ctrl-C (before the loop installs its StopFlag)."""
    raise KeyboardInterrupt
