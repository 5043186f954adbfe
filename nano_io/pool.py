"""Worker processes that leave Ctrl-C to the main process, never outlive it, and never hang it.

Why not multiprocessing.Pool: its task-handler thread pushes every task into one shared pipe. When a task is
bigger than the pipe's buffer (prepare sends 1 MB of text a task) and a Ctrl-C arrives, Pool.terminate() kills the
workers while that thread is still blocked writing the task, then joins the thread: nothing reads the pipe any
more, and the interrupted command hangs forever instead of printing its one line (seen in CI).

So this pool has no threads. Each worker has its own duplex pipe and holds at most one task; the main process
hands a task only to an idle worker (a worker is then blocked reading, so the send always completes), waits on
all pipes at once, and puts the results back in input order. Leaving the `with` block ends the workers: they are
asked to stop after a normal end, killed after an exception - there is nothing in them to clean up.

Ctrl-C: a terminal sends SIGINT to every process of the foreground group. Workers ignore it (their tracebacks
would surround the main process's one-line message); the main process gets KeyboardInterrupt and leaves the block.
A Ctrl-C while the workers are being started is held back (a Python-level handler: the signal may be delivered to
any thread) and raised once every started worker is inside the block that ends them; SIGINT is also blocked in the
starting thread, so that a child starts with it blocked and can ignore it before it is let through.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import sys
import threading
from multiprocessing.connection import wait

_conn = None  # in a worker: its pipe to the main process (report() sends progress through it)
_SIGINT = {signal.SIGINT}


def report(value) -> None:
    """Called by a task running in a worker: hand `value` to the main process's on_progress now."""
    if _conn is None:
        raise RuntimeError("nano_io.pool.report is for tasks running in a WorkerPool's workers")
    _conn.send(("progress", value))


def default_context():
    """fork on Linux (cheapest: nothing to re-import, the initializer's arguments are not pickled); elsewhere the
    platform's default (spawn on macOS, where forking a process that has loaded system frameworks is unsafe)."""
    return mp.get_context("fork" if sys.platform == "linux" else None)


def _worker_main(conn, parent_end, initializer, initargs):
    global _conn
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the parent's Python handlers; SIGTERM must simply end it (the training CLI's own
    # SIGTERM handler would raise inside the worker).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGINT)  # blocked by the parent while starting us; now ignored
    if parent_end is not None:
        # Forked: close our copy of the main process's end, so that if the main process dies we read EOF and exit.
        parent_end.close()
    _conn = conn
    init_error = None
    try:
        if initializer is not None:
            initializer(*initargs)
    except Exception as e:  # answered to every task: the caller sees it where it waits for a result
        init_error = e
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the main process is gone
            return
        if task is None:
            return
        fn, arg = task
        try:
            if init_error is not None:
                raise init_error
            out = ("result", fn(arg))
        except Exception as e:
            out = ("error", e)
        try:
            conn.send(out)
        except Exception as e:  # a result or exception that does not pickle
            conn.send(("error", RuntimeError(f"a worker could not send back its result: {e}")))


class WorkerPool:
    """`processes` worker processes, each running initializer(*initargs) once, started in the multiprocessing
    context `ctx` (default_context() when None). Use it as a context manager:
    `with WorkerPool(2, init, args) as pool: pool.map(fn, items)`."""

    def __init__(self, processes: int, initializer=None, initargs=(), ctx=None):
        if processes < 1:
            raise ValueError(f"a worker pool needs at least one process, not {processes}")
        ctx = ctx or default_context()
        self._ctx, self._processes, self._init = ctx, processes, (initializer, tuple(initargs))
        self._procs, self._conns = [], []
        self._usable = True

    def __enter__(self):
        """Start the workers. Done here rather than in __init__ so that no Ctrl-C can fall between a started
        worker and the `with` block that ends it."""
        main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
        held: list[int] = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum)) if main else None
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGINT)
        try:
            try:
                self._start()
            finally:
                if main:
                    signal.signal(signal.SIGINT, previous)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            if held and callable(previous):  # a Ctrl-C held back during start-up: raise it where close() runs
                previous(signal.SIGINT, None)
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def _start(self):
        fork = self._ctx.get_start_method() == "fork"
        for _ in range(self._processes):
            ours, theirs = self._ctx.Pipe(duplex=True)
            self._conns.append(ours)
            p = self._ctx.Process(target=_worker_main, args=(theirs, ours if fork else None, *self._init),
                                  daemon=True)
            self._procs.append(p)
            p.start()
            theirs.close()

    def imap(self, fn, items, on_progress=None):
        """fn(item) for every item, in worker processes; yields the results in input order. At most two tasks
        per worker are out (sent or finished, not yet yielded), so memory stays bounded on any input. A worker's
        exception is raised here; report(value) in fn calls on_progress(value) here."""
        if not self._procs:
            raise RuntimeError("a WorkerPool runs tasks only inside its `with` block")
        if not self._usable:
            raise RuntimeError("this WorkerPool was left in the middle of a map; make a new one")
        self._usable = False  # until this map ends cleanly: workers may still hold its tasks
        items = iter(items)
        idle = list(range(len(self._conns)))
        busy: dict = {}        # connection -> (worker, task index)
        done: dict = {}        # task index -> result, until it is its turn
        sent = yielded = 0
        exhausted = False
        while True:
            # Hand out work first, again after every result yielded: the bound on tasks out may have kept an idle
            # worker waiting (the first task slow, the next ones done), and only a yield frees it.
            while idle and not exhausted and sent < yielded + 2 * len(self._conns):
                try:
                    item = next(items)
                except StopIteration:
                    exhausted = True
                    break
                w = idle.pop()
                self._conns[w].send((fn, item))  # an idle worker is blocked reading: this cannot wait on it
                busy[self._conns[w]] = (w, sent)
                sent += 1
            if yielded in done:
                yield done.pop(yielded)
                yielded += 1
                continue
            if not busy:  # nothing out and nothing left to yield: the bound cannot hold work back, so items ran out
                self._usable = True
                return
            for conn in wait(list(busy)):
                kind, value = self._receive(conn, busy[conn][0])
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(value)
                    continue
                w, i = busy.pop(conn)
                idle.append(w)
                if kind == "error":
                    raise value
                done[i] = value

    def map(self, fn, items, on_progress=None) -> list:
        return list(self.imap(fn, items, on_progress))

    def _receive(self, conn, w):
        try:
            return conn.recv()
        except EOFError:
            self._procs[w].join(timeout=1)
            raise RuntimeError(f"a worker process died (exit code {self._procs[w].exitcode}); if the machine ran "
                               f"out of memory, use fewer workers") from None

    def close(self, graceful: bool = True) -> None:
        """End the workers: asked to stop (graceful, after a normal end) or killed; joined either way."""
        if graceful:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.send(None)
            for p in self._procs:
                p.join(timeout=5)
        for p in self._procs:
            if p.exitcode is None and p.pid is not None:
                p.kill()  # SIGKILL: a worker has nothing to clean up, and SIGTERM could meet one still starting
        for p in self._procs:
            if p.pid is not None:
                p.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []

    def __exit__(self, exc_type, exc, tb):
        self.close(graceful=exc_type is None and self._usable)

