"""What every benchmark script shares: run a child process and watch it, read what it reports, record the machine
and its load, save the results. A script in benchmarks/ keeps its own experiment; the plumbing is here.

Children run from the repository root (so ../shared/data and tests/fixtures resolve as in the README's commands),
one framework per process with that framework's environment (nano_core.host.framework_env: OpenBLAS preloaded for
MLX, never for PyTorch, whose CPU kernels it slows), and in a session of their own, so that a timeout, an error or
Ctrl-C in the parent stops the whole tree a child started (the ranks of torchrun and mlx.launch included).

The machine is shared with other work more often than not: every child's record carries the load average before
and after it, and every report the machine it ran on, so that figures are compared only with figures taken under a
similar load.
"""
from __future__ import annotations

import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nano_core.host import cpu_brand, framework_env, installed_openblas
from nano_io.files import atomic_path, atomic_write

ROOT = Path(__file__).resolve().parents[1]
OPENBLAS = installed_openblas() or "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"


def free_ports(n: int = 1) -> int:
    """A port p with p .. p + n - 1 all free on 127.0.0.1, for a launcher's rendezvous (mlx.launch listens on
    --starting-port + rank). Picked below the kernel's ephemeral range: a port the kernel hands out itself can be
    taken again by any outgoing connection between this check and the launcher's bind (CI saw EADDRINUSE so)."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    lo = 20000 if low > 21000 else 10000
    for _ in range(200):
        p = random.randrange(lo, max(lo + 1, low - n))
        try:
            for q in range(p, p + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports on 127.0.0.1")


class StepError(Exception):
    """A child of a benchmark failed: one line saying which and where its log is."""


# ----------------------------------------------------------------------------- children
def child_env(backend: str, threads: int | None = None) -> dict:
    """The environment of one backend's child process; with `threads`, that many OpenMP and OpenBLAS threads in it
    (and unbuffered output, so its log shows progress as it happens)."""
    env = framework_env(backend)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


def fmt_load(load) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def last_line(log: Path) -> str:
    """The last non-empty line of a log, tqdm's carriage-return updates counted as lines."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    pieces = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return pieces[-1] if pieces else ""


def _stop(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (it leads its own process group) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def run_child(label: str, cmd: list[str], log: Path, env: dict | None, *, timeout: float | None = None,
              every: float = 60.0, progress=None, watch=None, poll_s: float = 0.5, fail_markers=()) -> dict:
    """Run `cmd` from the repository root to its end, its output in `log`, in `env` (None: this process's). Every
    `every` seconds a console line says how it goes (`progress()`, or the log's last line); `watch(pid)` is called
    at each poll (every `poll_s` s).

    Returns the child's record: label, command, seconds, peak RSS of the child (os.wait4), the load average before
    and after, exit code. A non-zero exit, one of `fail_markers` in the log (mlx.launch exits 0 whatever its ranks
    did), or `timeout` seconds passing is a StepError naming the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before, t0 = os.getloadavg(), time.perf_counter()
    print(f"{label}: {' '.join(map(str, cmd[1:]))}"[:200], flush=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            next_note = t0 + every
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if watch is not None:
                    watch(proc.pid)
                time.sleep(poll_s)
                now = time.perf_counter()
                if timeout is not None and now - t0 > timeout:
                    raise StepError(f"{label}: no result within {timeout:.0f} s -- see {log}")
                if now >= next_note:
                    status_line = progress() if progress else last_line(log)
                    print(f"  {now - t0:5.0f} s  {status_line[:110]}", flush=True)
                    next_note += every
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
        finally:
            _stop(proc)
    seconds = time.perf_counter() - t0
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux, bytes on macOS
    record = {"step": label, "cmd": [str(c) for c in cmd[1:]], "seconds": seconds, "peak_rss_bytes": rss,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "rc": rc}
    text = log.read_text(errors="replace") if fail_markers else ""
    if rc != 0 or any(m in text for m in fail_markers):
        tail = "\n".join(text.replace("\r", "\n").splitlines()[-15:]) if text else last_line(log)[:200]
        raise StepError(f"{label} failed (exit {rc}): {tail} -- see {log}")
    print(f"  done in {seconds:.0f} s (load average {fmt_load(load_before)} -> {fmt_load(os.getloadavg())})",
          flush=True)
    return record


def finished(saved: Path, cmd: list[str], fresh: bool) -> dict | None:
    """The record of a step a previous run of the benchmark saved in `saved` with the same command, to reuse it;
    None when there is none, its command differs, or --fresh asks for everything again."""
    if fresh or not saved.is_file():
        return None
    try:
        record = json.loads(saved.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("cmd", record.get("command")) == [str(c) for c in cmd[1:]] else None


# ----------------------------------------------------------------------------- what children report
def last_json(text: str) -> dict | None:
    """The last line of a child's output that is a JSON object: how a worker hands its result to the parent."""
    for line in reversed(text.replace("\r", "\n").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (a run's metrics.jsonl); a line being written, or torn, is left out."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ----------------------------------------------------------------------------- the machine, and saving results
def machine() -> dict:
    """The machine a report was measured on, and when."""
    return {"cpu": cpu_brand(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def save_json(path: Path, obj) -> Path:
    """Write a report atomically (a reader never sees half of it); the path written."""
    return atomic_write(path, json.dumps(obj, indent=1))


def save_text(path: Path, text: str) -> Path:
    return atomic_write(path, text if text.endswith("\n") else text + "\n")


def save_figure(fig, path: Path, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)


def pyplot():
    """matplotlib's pyplot on the file-only backend (benchmarks never open windows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
