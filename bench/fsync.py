#!/usr/bin/env python3
"""The sync time of a disk: the physical bound under W2 (bench/run.py imports `measure`).

hubhook's SQLite store (WAL, synchronous=FULL) ends every acknowledged commit with one
fdatasync(2) of the WAL file (`strace -e fsync,fdatasync` on `hubhook serve`; the bundled SQLite
is built with HAVE_FDATASYNC, .cargo/config.toml — before that it called fsync). This loop does
what such a commit costs the disk, in the directory the store lives in: write 4 KiB, then
fdatasync, N times, and reports the median and p99 of the fdatasync call alone (the write goes to
the page cache and costs microseconds). The names below still say "fsync" for the sync.

Two shapes, measured alternately (one sample of each in turn):
  overwrite  4 KiB written at a rolling offset inside a 4 MiB file that already exists
             (a WAL after a checkpoint reset: the file's size does not change)
  append     4 KiB appended to a growing file (a WAL growing: the size changes, so the
             journal of the file system commits too)

    python3 bench/fsync.py [--dir DIR] [-n N] [--max-seconds S]

Standard library only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

BLOCK = 4096
FILE_BYTES = 4 * 1024 * 1024


def _pct(sorted_s: list[float], q: float) -> float:
    if not sorted_s:
        return float("nan")
    i = min(len(sorted_s) - 1, max(0, int(round(q / 100 * len(sorted_s) + 0.5)) - 1))
    return sorted_s[i]


def _open(path: Path, append: bool, block: bytes) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    if not append:
        # Lay the file out and make its size durable first, so the loop only rewrites data.
        for off in range(0, FILE_BYTES, 64 * BLOCK):
            os.pwrite(fd, block * 64, off)
    os.fsync(fd)
    return fd


def measure(directory: Path, n: int = 1000, max_seconds: float = 20.0) -> dict:
    """fsync after a 4 KiB write, `n` times per shape, the two shapes alternating (so a burst of
    other I/O on a shared machine hits both alike), bounded by `max_seconds` in all, in
    `directory`. Times in microseconds."""
    directory.mkdir(parents=True, exist_ok=True)
    block = os.urandom(BLOCK)
    shapes = ("overwrite", "append")
    paths = {sh: directory / f"fsync-probe-{os.getpid()}-{sh}.bin" for sh in shapes}
    fds: dict[str, int] = {}
    samples: dict[str, list[float]] = {sh: [] for sh in shapes}
    try:
        for sh in shapes:
            fds[sh] = _open(paths[sh], sh == "append", block)
        off = 0
        deadline = time.monotonic() + max_seconds
        for i in range(n + 5):  # the first 5 rounds unmeasured
            if time.monotonic() > deadline:
                break
            for sh in shapes:
                fd = fds[sh]
                if sh == "append":
                    os.write(fd, block)
                else:
                    os.pwrite(fd, block, off)
                t = time.perf_counter()
                os.fdatasync(fd)
                if i >= 5:
                    samples[sh].append((time.perf_counter() - t) * 1e6)
            off = (off + BLOCK) % FILE_BYTES
    finally:
        for sh, fd in fds.items():
            os.close(fd)
        for path in paths.values():
            try:
                path.unlink()
            except OSError:
                pass
    out: dict = {"dir": str(directory), "block_bytes": BLOCK, "call": "fdatasync"}
    for sh in shapes:
        s = samples[sh]
        ss = sorted(s)
        out[sh] = {
            "samples": len(s),
            "median_us": statistics.median(s) if s else float("nan"),
            "p99_us": _pct(ss, 99),
            "p90_us": _pct(ss, 90),
            "min_us": ss[0] if ss else float("nan"),
            "max_us": ss[-1] if ss else float("nan"),
            "mean_us": statistics.fmean(s) if s else float("nan"),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=str(Path(__file__).resolve().parent / ".run"),
                    help="directory on the disk to measure (default bench/.run, where run.py keeps its stores)")
    ap.add_argument("-n", type=int, default=1000, help="fsyncs per shape")
    ap.add_argument("--max-seconds", type=float, default=20.0, help="time bound for the whole loop")
    a = ap.parse_args()
    r = measure(Path(a.dir), a.n, a.max_seconds)
    print(json.dumps(r, indent=2))
    for shape in ("overwrite", "append"):
        v = r[shape]
        print(f"{shape:9s}: median {v['median_us']:.0f} µs, p99 {v['p99_us']:.0f} µs over {v['samples']}"
              f" -> 64 in flight / median = {64 / (v['median_us'] / 1e6):,.0f} messages/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
