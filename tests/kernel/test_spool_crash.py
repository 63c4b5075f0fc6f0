"""SIGKILL in the middle of spool writes: a real child process appends, acknowledges and rolls
segments in a tight loop and is killed at a (seeded) arbitrary point, many times over the same
directory. After each kill the spool reopens with every payload whole, the pending ones in one
unbroken sequence, and nothing lost that ``append`` had returned for (fsynced), nor anything
acknowledged delivered again beyond the last acknowledged batch."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from infermeter.kernel.spool import Spool
from tests.conftest import REPO

ROUNDS = 12
SEGMENT_BYTES = 4096  # small: the loop rolls and deletes segments all the time

# The child: from seq START, append batches of 1..40 payloads; after each append returns
# print "w <last seq>"; every third batch peek 25 and ack them, then print "a <last acked>".
CHILD = """
import json, random, sys
from infermeter.kernel.spool import Spool
spool = Spool(sys.argv[1], segment_bytes=int(sys.argv[3]))
seq, rng = int(sys.argv[2]), random.Random(int(sys.argv[2]))
n = 0
while True:
    batch = [json.dumps({"seq": seq + i, "pad": "x" * rng.randrange(200)}).encode()
             for i in range(rng.randrange(1, 40))]
    spool.append(batch)
    seq += len(batch)
    print("w", seq - 1, flush=True)
    n += 1
    if n % 3 == 0:
        got, pos = spool.peek(25)
        if got:
            spool.ack(pos, len(got))
            print("a", json.loads(got[-1])["seq"], flush=True)
"""


def _pending(directory: Path) -> list[int]:
    """Reopen the spool and read every pending payload (without acknowledging)."""
    spool = Spool(directory, segment_bytes=SEGMENT_BYTES)
    try:
        payloads, _ = spool.peek(1_000_000)
        assert spool.pending == len(payloads)
        return [json.loads(p)["seq"] for p in payloads]
    finally:
        spool.close()


def test_sigkill_mid_write_never_tears_or_loses_a_durable_payload(tmp_path: Path) -> None:
    rng = random.Random(7)
    next_seq, last_acked = 0, -1
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(next_seq), str(SEGMENT_BYTES)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.stdout is not None
        durable, acked = next_seq - 1, last_acked
        for _ in range(rng.randrange(5, 120)):  # kill after an arbitrary number of steps
            kind, value = proc.stdout.readline().split()
            if kind == "w":
                durable = int(value)
            else:
                acked = int(value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        seqs = _pending(tmp_path)
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, seqs
        last = seqs[-1] if seqs else acked
        assert last >= durable, f"payload {durable} was fsynced but is gone (last {last})"
        if seqs:
            # Acknowledged payloads stay delivered: at most the batch being acked when the
            # kill came (its ack file not yet renamed into place) comes back.
            assert seqs[0] > last_acked
            assert seqs[0] >= acked - 25 + 1
        next_seq, last_acked = last + 1, (seqs[0] - 1 if seqs else last)
    assert next_seq > ROUNDS  # the rounds did write something
