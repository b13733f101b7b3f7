"""Working memory of apply on a lazily opened file as the file grows deeper.

W6/W7 of ``peers.py`` are 256^3, only 4 rows of 64^3 stored chunks deep, so a reader
that holds "a few chunk rows" and one that holds the whole array look alike there.
This script runs W6's setup (uint16, stored chunks 64^3, patch 96, step 48, the model
casts to float32) on zarr (or netCDF, ``--source netcdf``) files 256, 512 and 1024
deep (256 x 256 in the other dims), each run in a fresh process through peers.py's
own child, and prints the working memory above the float32 output for xpatch on the
lazy file and for read whole + apply in memory, in MB and in rows of stored chunks::

    python benchmarks/lazy_memory.py                  # ~1-2 min on 2 cores
    python benchmarks/lazy_memory.py --source netcdf --depths 256,1024

The files are written once into peers.py's cache folder (not the repository).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(depth: int, source: str, peer: str) -> dict:
    sys.path.insert(0, str(HERE))
    import peers

    name = f"deep{depth}"
    base = "W6" if source == "zarr" else "W7"
    peers.WORKLOADS[name] = dict(peers.WORKLOADS[base], shape=(1, depth, 256, 256))
    peers.ensure_file(peers.WORKLOADS[name], False)
    peers.ensure_file(peers.WORKLOADS[name], False, tiny=True)
    return peers.child(peer, name, quick=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", choices=("zarr", "netcdf"), default="zarr")
    ap.add_argument("--depths", default="256,512,1024")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        depth, source, peer = args.child
        print(json.dumps(child(int(depth), source, peer)))
        return 0
    print(
        "| depth | decoded array MB | output MB | peer | s | work above output MB"
        " | in chunk rows (8 MB) |"
    )
    print("| ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for depth in (int(d) for d in args.depths.split(",")):
        array_b, out_b, row_b = depth * 256 * 256 * 2, depth * 256 * 256 * 4, 64 * 256 * 256 * 2
        for peer in ("xpatch", "xpatch[read-whole]"):
            cmd = [sys.executable, __file__, "--child", str(depth), args.source, peer]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode or not lines:
                print(f"| {depth} | | | {peer} | failed: {proc.stderr.strip()[-200:]} | | |")
                continue
            r = json.loads(lines[-1])
            extra = r["work"] - out_b
            print(
                f"| {depth} | {array_b / 2**20:.0f} | {out_b / 2**20:.0f} | {peer}"
                f" | {r['seconds']:.3f} | {extra / 2**20:.0f} | {extra / row_b:.1f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
