"""Peak memory of `echoflow train latents` as the number of videos grows (docs/scale.md).

Fakes an EchoNet-Dynamic-sized dataset: a FileList of N rows (EchoNet-Dynamic has 10,030) whose AVIs are
hard links to a few short phantom clips (so the folder is made in seconds), then runs the real command in
a child process per size and reads the child's peak RSS (`resource.getrusage(RUSAGE_CHILDREN)`).

    python scripts/latent_cache_scale.py --work /tmp/scale --videos 1000,3000,10030
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def fake_dataset(base: Path, videos: int, out: Path) -> None:
    """`videos` FileList rows cycling over the clips of `base`, each AVI a hard link to one of them."""
    with open(base / "FileList.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    (out / "Videos").mkdir(parents=True)
    with open(out / "FileList.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for i in range(videos):
            row = dict(rows[i % len(rows)])
            name = f"fake{i:05d}"
            os.link(base / "Videos" / f"{row['FileName']}.avi", out / "Videos" / f"{name}.avi")
            row.update(FileName=name, PatientID=f"P{i:05d}", Split="TRAIN" if i % 10 < 7 else ("VAL" if i % 10 < 9 else "TEST"))
            writer.writerow(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True)
    parser.add_argument("--videos", default="1000,3000,10030")
    parser.add_argument("--frames", type=int, default=3, help="frames per fake clip")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    py = [sys.executable, "-m", "echoflow_models"]
    subprocess.run([*py, "train", "dataset", "--out", str(work / "base"), "--patients", "8", "--frames",
                    str(args.frames), "--extra-videos", "0", "--quiet"], check=True, env=env)
    vae_cmd = [*py, "train", "vae", "--data", str(work / "base"), "--out", str(work / "vae"), "--steps", "1",
               "--channels", "32,64,64", "--threads", "1", "--quiet", "--eval-split", ""]
    subprocess.run(vae_cmd, check=True, env=env)
    results = []
    for n in (int(v) for v in args.videos.split(",")):
        data = work / f"ds{n}"
        fake_dataset(work / "base", n, data)
        cmd = ["/usr/bin/env", *py, "train", "latents", "--data", str(data), "--vae", str(work / "vae"),
               "--out", str(work / f"latents{n}"), "--scaling-out", str(work / f"scaling{n}.pt"),
               "--threads", "1", "--device", "cpu", "--quiet"]
        t0 = time.perf_counter()
        # a fresh child per size: RUSAGE_CHILDREN's maximum is then this child's (the children before were smaller)
        probe = [sys.executable, "-c", "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)", *cmd]
        peak_kib = int(subprocess.run(probe, check=True, env=env, capture_output=True, text=True).stdout.split()[-1])
        shards = sorted((work / f"latents{n}" / "shards").iterdir())
        results.append({"videos": n, "peak_rss_mib": round(peak_kib / 1024, 1),
                        "seconds": round(time.perf_counter() - t0, 1), "shards": len(shards),
                        "cache_mib": round(sum(p.stat().st_size for p in shards) / 2**20, 1)})
        print(json.dumps(results[-1]), flush=True)


if __name__ == "__main__":
    main()
