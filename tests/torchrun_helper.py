"""Running a test worker under torchrun: two gloo processes on the CPU.

Workers print :data:`DONE` (flushed) after their last collective, right before ``destroy_process_group()``.
On an oversubscribed CPU gloo's teardown can abort a rank after both ranks have finished ("terminate called without an
active exception" inside ``destroy_process_group``; seen about 1 run in 3 beside training jobs). That abort happens
after everything the test checks was written, so :func:`torchrun` accepts it when both ranks printed ``DONE``; any
other non-zero exit fails the test.
"""
import os
import socket
import subprocess
import sys

DONE = "rank done"
TEARDOWN_ABORT = "terminate called without an active exception"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, env=None, timeout=300, done=DONE) -> subprocess.CompletedProcess:
    """``script *args`` on 2 gloo processes (``OMP_NUM_THREADS=1`` plus ``env``); asserts that it succeeded."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
    finished = r.stdout.count(done) == 2
    assert r.returncode == 0 or (finished and TEARDOWN_ABORT in r.stderr), r.stderr[-4000:]
    assert finished, f"expected both ranks to print {done!r}; stdout: {r.stdout[-2000:]}"
    return r
