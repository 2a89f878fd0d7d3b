"""Benchmark: the native batch core against the straightforward per-record pipeline.

Both run as whole processes, file to file, on the same seeded workload in the same run;
the report gives records/s, CPU seconds per million records, the ratio and each process's
peak memory (max RSS).

    python bench/core_bench.py --records 1000000
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str]) -> tuple[float, float, dict, float]:
    """Wall seconds, peak RSS in MiB, the JSON summary (last stdout line) and CPU seconds of one child process.

    Peak RSS is the largest process of the run's tree: the child itself and, via
    RUSAGE_CHILDREN of a wrapper, any worker processes it started. Each run starts with no dirty
    page cache (``os.sync`` first, not timed): the per-record baseline writes ~800 MB through the
    page cache, and its write-back would otherwise share the disk with the next run's writes.
    """
    os.sync()
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
                   "sys.stderr.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(r)")
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
        out.seek(0)
        summary = json.loads(out.read().decode().strip().splitlines()[-1])
        err.seek(0)
        tree_kib = int(err.read().decode().strip().splitlines()[-1])
    # The wrapper's usage includes every process it waited for (the run and its workers).
    return elapsed, max(tree_kib, usage.ru_maxrss) / 1024, summary, usage.ru_utime + usage.ru_stime


def compile_package() -> None:
    """Write the package's bytecode once, as installing a wheel does (pip compiles it at install time).

    Why: where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's environment sets it), an
    editable checkout compiles every module from source at each start: about 0.24 G
    instructions (cachegrind), ~0.08 s of a 1M-record run that no installed deployment pays.
    Python reads existing bytecode even with that variable set; it only does not write it.
    """
    compileall.compile_dir(str(ROOT / "pipeline"), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default=str(ROOT / ".cdrpipe" / "bench"))
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sample = work / f"workload-{args.records}-{args.seed}.jsonl"
    if not sample.exists():
        print(f"generating {args.records:,} records (seed {args.seed}) -> {sample}", file=sys.stderr)
        from pipeline.synthetic import write_sample
        write_sample(sample, args.records, seed=args.seed)
    compile_package()
    keys = work / "keys"
    if not (keys / "worker-keyring.json").exists():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "keys", "generate", "--dir", str(keys)], check=True)
    keyring = str(keys / "worker-keyring.json")
    size_mb = sample.stat().st_size / 2**20

    rows = []
    rows.append(("core (cdrpipe process)", *run([sys.executable, "-m", "pipeline.cli", "process", "--quiet",
                                                 "--keyring", keyring, "--input", str(sample),
                                                 "--out-dir", str(work / "out-core")])))
    if not args.skip_baseline:
        rows.append(("per-record baseline", *run([sys.executable, str(ROOT / "bench" / "baseline.py"), keyring,
                                                  str(sample), str(work / "out-baseline")])))

    print(f"workload: {args.records:,} records, {size_mb:,.0f} MiB, seed {args.seed}, {os.cpu_count()} cores")
    print(f"{'pipeline':<26}{'seconds':>9}{'records/s':>12}{'CPU-s/1M':>10}{'peak MiB':>10}  counts")
    for name, t, rss, summary, cpu in rows:
        per_million = cpu * 1_000_000 / max(summary["in"], 1)
        print(f"{name:<26}{t:>9.2f}{summary['in'] / t:>12,.0f}{per_million:>10.1f}{rss:>10,.0f}  "
              f"{json.dumps(summary)}")
    if len(rows) == 2:
        print(f"speed-up: {rows[1][1] / rows[0][1]:.2f}x")


if __name__ == "__main__":
    main()
