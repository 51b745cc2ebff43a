"""Process-wide set-up of a process that runs networks: torch's threads and the C allocator.

Why the allocator: glibc's malloc serves blocks above its mmap threshold (128 KiB at start) with
mmap and unmaps them at free, raising that threshold only to the largest block freed so far. A
forward allocates and frees activations of several MiB at every call; unmapped at each free, they
come back as fresh pages at the next call, each one zero-filled by the kernel on its first touch
(about a thousand to nine thousand minor page faults per forward of the small bundled DANet, a tenth
of its CPU time on a 2-core machine). A fixed mmap threshold of 32 MiB (glibc's largest) and a trim
threshold of 256 MiB keep freed blocks in the process, so every forward after the first reuses the
same pages. The price: the process holds on to its peak working set, which a server that runs the
same networks again and again reaches anyway. ``SPIKESERVE_KEEP_FREED_MEMORY=false`` turns it off.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse (see the module's docstring).

    Returns whether it took effect: False off Linux, or where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; a fixed mmap threshold also stops glibc's own adjustments
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )


def prepare_inference_process(torch_threads: int | None, keep_memory: bool = True) -> None:
    """What every process that runs networks does once, before loading any: the embedded worker,
    a Redis worker, and a TorchServe worker running our handler."""
    if keep_memory and not keep_freed_memory():
        log.info("the C allocator is not glibc's: freed tensor memory goes back to the system")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
