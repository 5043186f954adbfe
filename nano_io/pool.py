"""Worker pools that leave Ctrl-C to the main process and never outlive it.

A terminal's Ctrl-C sends SIGINT to every process of the foreground group: the main process and each pool
worker. A worker that turned it into KeyboardInterrupt would print a traceback of its own (often several, one per
worker, around the main process's one-line message). So workers ignore SIGINT; the main process gets
KeyboardInterrupt and leaves the `with worker_pool(...)` block, which terminates the workers.

The start-up is the delicate part. KeyboardInterrupt raised inside multiprocessing.Pool() (it forks worker after
worker) leaves the workers already started orphaned, idle forever; raised just after Pool() returns but before
the caller's try/finally, it skips the terminate. So a Ctrl-C during start-up is only recorded (a Python-level
handler: blocking the signal would not do, another thread of the process may receive it) and raised once the pool
is inside the block that terminates it.
"""
from __future__ import annotations

import contextlib
import signal
import threading


def _init_worker(initializer, initargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the parent's Python handlers; the pool ends its workers with SIGTERM, which must
    # simply end them (the training CLI's own SIGTERM handler would raise inside a worker that is exiting).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def worker_pool(ctx, processes: int, initializer=None, initargs=()):
    """`with worker_pool(ctx, n, init, args) as pool:` a ctx.Pool whose workers ignore SIGINT and are terminated
    (and joined) when the block ends, normally, by an exception or by Ctrl-C - also a Ctrl-C during start-up."""
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum)) if main else None
    try:
        pool = ctx.Pool(processes, initializer=_init_worker, initargs=(initializer, tuple(initargs)))
    except BaseException:
        if main:
            signal.signal(signal.SIGINT, previous)
        raise
    try:
        if main:
            signal.signal(signal.SIGINT, previous)
            if held and callable(previous):  # a Ctrl-C held back during start-up: raise it here, inside the try
                previous(signal.SIGINT, None)
        yield pool
    finally:
        pool.terminate()
        pool.join()
