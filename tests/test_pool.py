"""nano_io.pool: the worker processes behind prepare's encoding, tokenizer counting and encode_batch."""
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nano_io.pool import WorkerPool, default_context, report

CTX = default_context()


def _square(x):
    time.sleep(0.01 * (x % 3))  # finish out of order
    return x * x


def _fail_on_five(x):
    if x == 5:
        raise ValueError("item 5 is bad: a one-line reason")
    return x


def _progress_then_len(text):
    for _ in range(3):
        report(1)
    return len(text)


def _die(x):
    os._exit(3)


def _set_offset(k):
    global _OFFSET
    _OFFSET = k


def _plus_offset(x):
    return x + _OFFSET


def _bad_init():
    raise ValueError("--encoder tiktoken needs tiktoken")


def _alive(pids):
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
            out.append(pid)
        except ProcessLookupError:
            pass
    return out


def test_results_come_back_in_input_order_from_a_pool_without_threads_and_workers_end_with_the_block():
    threads = threading.active_count()
    with WorkerPool(3) as pool:
        for i, y in enumerate(pool.imap(_square, range(50))):
            assert y == i * i
            # No helper thread in the main process: multiprocessing.Pool's task thread, left blocked writing a big
            # task into a pipe no one read any more, is what hung an interrupted prepare in CI.
            assert threading.active_count() == threads
        pids = [p.pid for p in pool._procs]
        assert pool.map(_square, [7]) == [49]  # a pool runs map after map
    time.sleep(0.1)
    assert _alive(pids) == []


@pytest.mark.parametrize("method", ["fork", "spawn"])  # spawn: macOS's default start method
def test_initializer_runs_once_per_worker_and_progress_and_errors_come_back(method):
    with WorkerPool(2, _set_offset, (100,), ctx=mp.get_context(method)) as pool:
        assert pool.map(_plus_offset, range(5)) == [100, 101, 102, 103, 104]
        seen = []
        assert pool.map(_progress_then_len, ["ab", "c"], on_progress=seen.append) == [2, 1] and seen == [1] * 6
        with pytest.raises(ValueError, match="item 5 is bad"):
            pool.map(_fail_on_five, range(10))


def test_a_worker_exception_is_raised_in_the_caller_with_its_message():
    with pytest.raises(ValueError, match="item 5 is bad"):
        with WorkerPool(2) as pool:
            pool.map(_fail_on_five, range(10))


def test_an_initializer_exception_is_raised_at_the_first_result_not_a_respawn_loop():
    with pytest.raises(ValueError, match="needs tiktoken"):
        with WorkerPool(2, _bad_init) as pool:
            pool.map(len, ["a", "b"])


def test_progress_reported_in_a_worker_reaches_on_progress():
    seen = []
    with WorkerPool(2) as pool:
        assert pool.map(_progress_then_len, ["ab", "cde", "f"], on_progress=seen.append) == [2, 3, 1]
    assert seen == [1] * 9


def test_a_worker_that_dies_is_one_error_not_a_hang():
    with pytest.raises(RuntimeError, match=r"a worker process died \(exit code 3\)"):
        with WorkerPool(2) as pool:
            pool.map(_die, range(4))


def test_report_outside_a_worker_is_a_one_line_error():
    with pytest.raises(RuntimeError, match="for tasks running in a WorkerPool's workers"):
        report(1)


def test_the_default_start_method_is_fork_on_linux_and_the_platform_default_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    assert default_context().get_start_method() == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")  # what macOS gets: Python's default there is spawn
    assert default_context() is mp.get_context(None)


def test_the_pool_refuses_work_outside_its_block_and_zero_processes():
    pool = WorkerPool(1)
    with pytest.raises(RuntimeError, match="inside its `with` block"):
        pool.map(len, ["a"])
    with pytest.raises(ValueError, match="at least one process"):
        WorkerPool(0)


def test_ctrl_c_while_workers_start_is_raised_after_they_are_all_started_and_then_ended(monkeypatch):
    # The Ctrl-C lands inside the second worker's start: it must neither orphan the first worker nor be lost.
    started = []
    real_start = CTX.Process.start

    def start(self):
        real_start(self)
        started.append(self.pid)
        if len(started) == 2:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(CTX.Process, "start", start)
    with pytest.raises(KeyboardInterrupt):
        with WorkerPool(3):
            pytest.fail("the held Ctrl-C was not raised before the block")
    assert len(started) == 3 and _alive(started) == []


# The CI failure this pool replaced multiprocessing.Pool for: prepare interrupted while 1 MB tasks were being
# written to the pool's shared pipe. Pool.terminate() killed the workers and then joined the thread still blocked
# writing; the command never ended. Run in a child, so that a hang fails this test instead of the suite.
CHILD = textwrap.dedent("""
    import multiprocessing as mp, os, signal, sys, time
    from nano_io.pool import WorkerPool

    def slow_len(text):
        time.sleep(0.3)
        return len(text)

    if __name__ == "__main__":
        pids = []
        try:
            with WorkerPool(2, ctx=mp.get_context("fork")) as pool:
                pids = [p.pid for p in pool._procs]
                for n in pool.imap(slow_len, ("x" * 4_000_000 for _ in range(40))):
                    signal.raise_signal(signal.SIGINT)  # Ctrl-C with big tasks out and the workers busy
        except KeyboardInterrupt:
            print("interrupted", pids, flush=True)
""")


@pytest.mark.skipif(sys.platform != "linux", reason="the child script forks workers")
def test_ctrl_c_with_big_tasks_out_ends_the_command_instead_of_hanging(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       cwd=os.path.dirname(os.path.dirname(__file__)),
                       env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert r.returncode == 0 and r.stdout.startswith("interrupted"), r.stderr
    pids = [int(p) for p in r.stdout.split("[")[1].split("]")[0].split(",")]
    assert len(pids) == 2 and _alive(pids) == []


SLOW_FIRST = textwrap.dedent("""
    import multiprocessing as mp, time
    from nano_io.pool import WorkerPool

    def slow_first(x):
        time.sleep(0.5 if x == 0 else 0.0)
        return x

    if __name__ == "__main__":
        with WorkerPool(2, ctx=mp.get_context("fork")) as pool:
            print(pool.map(slow_first, range(12)))
""")


@pytest.mark.skipif(sys.platform != "linux", reason="the child script forks workers")
def test_a_slow_first_task_while_the_other_worker_finishes_the_rest_does_not_stall_the_map(tmp_path):
    # The bound on tasks out (two per worker) once held the free worker back until the first result was yielded,
    # and the map then waited on no worker at all. In a child, so that a stall fails this test, not the suite.
    script = tmp_path / "child.py"
    script.write_text(SLOW_FIRST)
    root = os.path.dirname(os.path.dirname(__file__))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root,
                       env={**os.environ, "PYTHONPATH": root})
    assert r.returncode == 0 and r.stdout.strip() == str(list(range(12))), r.stderr
