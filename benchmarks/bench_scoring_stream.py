"""Peak memory of `lead-score` against pool size: the Arrow reader vs the former in-memory reader.

Rerun (about 15 minutes on 2 shared cores; ``--full`` adds the 10^6 scoring, stopped and resumed):

    python benchmarks/bench_scoring_stream.py --workdir /tmp/bench_stream [--sizes 10000 100000 1000000]
        [--limit 2000] [--full] [--json out.json]

1. A generated pool (:func:`~lead_lightning.data.generate_pool`, 10^5 examples per seed, seeds 0, 1,
   ...) is written to ``pool_<N>.jsonl`` (Alpaca JSONL, group in ``task``) for every size ``N``;
   smaller files are prefixes of the largest.
2. Memory against pool size: for every ``N`` and both readers (``--reader arrow``, the default, and
   ``--reader python``, the former one), ``lead-score --records pool_<N>.jsonl --limit L --devices 2``
   (two DDP processes, the tiny default model, ``--max-length 128``, batch 32, one thread each). The
   reader opens and reads the whole file; ``--limit`` bounds only the part scored, so the scoring
   work is the same at every ``N`` and what grows with ``N`` is what the reader keeps.
3. ``--full``: ``lead-score`` scores the whole largest pool with 2 processes, is stopped with SIGTERM
   once both ranks have written shards (``--stop-after`` seconds at least), and the same command is
   run again to finish (resume); the output is checked to hold every example.

Every process (rank 0 and the rank Lightning launches) is polled every 50 ms: ``VmHWM`` (the kernel's
peak resident set size, exact), and the largest ``RssAnon`` (heap: Python objects, tensors, Arrow
buffers read into memory) and ``RssFile`` (file-backed pages: shared libraries and the memory-mapped
Arrow file) seen. "Arrow bytes" is the size of the pool's Arrow file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

CHUNK = 100_000


def write_pools(workdir: Path, sizes: list[int]) -> dict[int, Path]:
    """``pool_<N>.jsonl`` for every size (prefixes of the largest), written a chunk at a time."""
    from lead_lightning.data import generate_pool

    biggest = max(sizes)
    paths = {n: workdir / f"pool_{n}.jsonl" for n in sizes}
    if all(p.is_file() for p in paths.values()):
        return paths
    files = {n: p.open("w") for n, p in paths.items()}
    written = 0
    for seed in range(-(-biggest // CHUNK)):
        for r in generate_pool(min(CHUNK, biggest - written), seed=seed):
            line = json.dumps({"instruction": r.prompt, "output": r.response, "task": r.group}) + "\n"
            for n, f in files.items():
                if written < n:
                    f.write(line)
            written += 1
    for f in files.values():
        f.close()
    return paths


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def _rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except (FileNotFoundError, PermissionError, ProcessLookupError):
        return None
    for item in env:
        if item.startswith(b"LOCAL_RANK="):
            return int(item.split(b"=", 1)[1])
    return 0


class Watch:
    """Runs a command in its own session and polls the peak memory of it and its children."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self.peaks: dict[int, dict[str, int]] = {}
        self.ranks: dict[int, int] = {}
        self.t0 = time.perf_counter()

    def poll(self) -> None:
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            st = _status(p.pid)
            if not st:
                continue
            if p.pid not in self.ranks:
                rank = _rank(p.pid)
                if rank is None:
                    continue
                self.ranks[p.pid] = rank
            peak = self.peaks.setdefault(p.pid, {})
            for k, v in st.items():
                peak[k] = max(peak.get(k, 0), v)

    def wait(self, until: Any = None) -> int:
        while self.proc.poll() is None:
            self.poll()
            if until is not None and until():
                self.proc.send_signal(signal.SIGTERM)  # rank 0; the group, as a scheduler does:
                os.killpg(self.proc.pid, signal.SIGTERM)
                until = None
            time.sleep(0.05)
        self.wall = time.perf_counter() - self.t0
        self.log.close()
        return int(self.proc.returncode)

    def by_rank(self) -> dict[int, dict[str, int]]:
        out: dict[int, dict[str, int]] = {}
        for pid, peak in self.peaks.items():
            rank = self.ranks.get(pid, -1)
            if rank in out and out[rank].get("VmHWM", 0) >= peak.get("VmHWM", 0):
                continue
            out[rank] = peak
        return out


def save_tiny_model(workdir: Path, pool: Path) -> Path:
    """The default tiny model and a BPE tokenizer (trained on ``pool``), saved for ``--model``."""
    from lead_lightning.data import read_records
    from lead_lightning.models import tiny_causal_lm, train_bpe_tokenizer

    out = workdir / "model"
    if not (out / "config.json").is_file():
        records = read_records(pool, format="alpaca")
        tokenizer = train_bpe_tokenizer([r.prompt + " " + r.response for r in records], vocab_size=512)
        model = tiny_causal_lm(len(tokenizer), hidden_size=64, num_layers=2, num_heads=4, seed=0)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def _cmd(
    records: Path, out: Path, shards: Path, reader: str, limit: int | None, model: Path | None = None
) -> list[str]:
    cmd = [sys.executable, "-m", "lead_lightning.scoring.cli", "--records", str(records), "--reader", reader]
    cmd += ["--devices", "2", "--accelerator", "cpu", "--batch-size", "32", "--max-length", "128"]
    cmd += ["--out", str(out), "--shard-dir", str(shards), "--clusters", "ifd", "--k", "7"]
    cmd += ["--model", str(model)] if model else []
    return cmd + (["--limit", str(limit)] if limit else [])


def _mib(x: int, digits: int = 0) -> str:
    return f"{x / 2**20:,.{digits}f}"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_scoring_stream")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--limit", type=int, default=2000, help="examples scored per memory run")
    ap.add_argument("--readers", nargs="*", default=["arrow", "python"], help="readers of the --limit runs")
    ap.add_argument("--full", action="store_true", help="also score the largest pool whole, stop, resume")
    ap.add_argument("--full-readers", nargs="+", default=["arrow"], help="readers of the --full runs")
    ap.add_argument(
        "--saved-model",
        action="store_true",
        help="score with a tiny model saved to <workdir>/model (--model): no BPE training in lead-score",
    )
    ap.add_argument("--stop-after", type=float, default=60.0, help="--full: SIGTERM after this many s")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t = time.perf_counter()
    pools = write_pools(work, args.sizes)
    print(
        f"pools written in {time.perf_counter() - t:.1f} s: "
        + ", ".join(f"{n}: {p.stat().st_size / 2**20:.1f} MiB" for n, p in pools.items())
    )
    model = save_tiny_model(work, pools[min(args.sizes)]) if args.saved_model else None
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        for reader in args.readers:
            tag = f"{reader}_{n}"
            out, shards = work / f"{tag}.parquet", work / f"{tag}.shards"
            subprocess.run(["rm", "-rf", str(out), str(shards)], check=True)
            w = Watch(_cmd(pools[n], out, shards, reader, args.limit, model), work / f"{tag}.log", env)
            rc = w.wait()
            arrow = sum(p.stat().st_size for p in (shards / "arrow").glob("*.arrow"))
            row = {
                "n": n,
                "reader": reader,
                "rc": rc,
                "wall_s": round(w.wall, 1),
                "arrow_bytes": arrow,
                "jsonl_bytes": pools[n].stat().st_size,
                "ranks": w.by_rank(),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    for reader in args.full_readers if args.full else []:
        n = max(args.sizes)
        out, shards = work / f"full_{reader}.parquet", work / f"full_{reader}.shards"
        subprocess.run(["rm", "-rf", str(out), str(shards)], check=True)
        cmd = _cmd(pools[n], out, shards, reader, None, model)
        started = time.perf_counter()

        def both_ranks_scoring(started: float = started, shards: Path = shards) -> bool:
            return time.perf_counter() - started > args.stop_after and all(
                list(shards.glob(f"rank{r}_batch*.pt")) for r in (0, 1)
            )

        w = Watch(cmd, work / f"full_{reader}_1.log", env)
        rc = w.wait(until=both_ranks_scoring)
        n_shards = len(list(shards.glob("rank*_batch*.pt")))
        rows.append(
            {
                "n": n,
                "reader": reader,
                "phase": "stopped",
                "rc": rc,
                "wall_s": round(w.wall, 1),
                "shards": n_shards,
                "ranks": w.by_rank(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        w = Watch(cmd, work / f"full_{reader}_2.log", env)
        rc = w.wait()
        import pyarrow.parquet as pq

        n_out = pq.read_metadata(out).num_rows if out.is_file() else 0
        arrow = sum(p.stat().st_size for p in (shards / "arrow").glob("*.arrow"))
        rows.append(
            {
                "n": n,
                "reader": reader,
                "phase": "resumed",
                "rc": rc,
                "wall_s": round(w.wall, 1),
                "rows_out": n_out,
                "arrow_bytes": arrow,
                "ranks": w.by_rank(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n{platform.machine()}, {os.cpu_count()} cores (shared), limit {args.limit}, 2 processes")
    print(
        f"{'N':>9} {'reader':<7} {'phase':<8} {'rank':>4} {'peak RSS MiB':>13} {'anon MiB':>9}"
        f" {'file MiB':>9} {'Arrow MiB':>10} {'wall s':>7}"
    )
    for row in rows:
        for rank, peak in sorted(row["ranks"].items()):
            print(
                f"{row['n']:>9} {row['reader']:<7} {row.get('phase', 'limit'):<8} {rank:>4}"
                f" {_mib(peak.get('VmHWM', 0)):>13} {_mib(peak.get('RssAnon', 0)):>9}"
                f" {_mib(peak.get('RssFile', 0)):>9} {_mib(row.get('arrow_bytes', 0), 1):>10} {row['wall_s']:>7}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
