"""nano_core.host.keep_freed_memory: a freed large buffer is reused without page faults (Linux glibc)."""
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, resource, sys
from nano_core.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20  # larger than glibc's biggest mmap threshold: served by mmap unless tuned
def touch_and_free():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch_and_free()  # the first touch always faults; the second is what a training step's reuse costs
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, count = out.split()
    return applied, int(count)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only (a no-op elsewhere)")
def test_reused_64mb_buffer_is_not_page_faulted_again_after_keep_freed_memory():
    _, default_faults = faults("default")
    applied, tuned_faults = faults("tuned")
    assert applied == "True"
    pages = (64 << 20) // 4096
    assert default_faults > pages // 2      # glibc's default: every page of the buffer faults again
    assert tuned_faults < pages // 20       # tuned: the heap keeps the memory, the second pass reuses it
