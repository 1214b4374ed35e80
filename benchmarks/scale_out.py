"""A chunked scan on one process against a real multi-process Dask cluster, at 20 million rows.

    python -m benchmarks.scale_out [--rows 20000000] [--features 20] [--chunk-rows 250000]
                                   [--workers 2,4] [--repeats 1] [--work DIR] [--write]

One synthetic batch (``benchmarks.throughput.make_data``: three Gaussian classes, written as Parquet a row
group at a time) and a 200,000-row reference. Everything runs against one ``prefect server start`` that
this script starts, as a platform team runs it:

* **1 process**: the scan in a fresh process on Prefect's default task runner, chunk by chunk;
* **N workers**: ``dask scheduler`` and N ``dask worker`` processes of one thread each, started here, and
  the same scan in a fresh process with ``dask_address`` set: each chunk's slices are scored on the
  workers, and each slice task holds its detectors to one thread.

Per run: wall time, rows per second, the peak RSS of the scan's process, and the largest peak RSS of a
worker (``ru_maxrss``, asked of each worker after the scan). Decisions are checked to agree: every run
must quarantine the same number of rows. Medians over ``--repeats``; runs of a repeat alternate.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.throughput import _in_fresh_process, make_data


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(ready, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not start within {seconds:.0f} s")


class Processes:
    """Processes started by the benchmark, all ended when it leaves."""

    def __init__(self, work: Path) -> None:
        self.work, self.started = work, []

    def start(self, command: list[str], log: str) -> None:
        with open(self.work / log, "w") as out:
            self.started.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.work))

    def stop(self) -> None:
        for process in reversed(self.started):
            process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.started = []


def prefect_server(work: Path, processes: Processes) -> str:
    """Start ``prefect server start`` on a free port; its API URL, set in this process's environment."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    os.environ.update({"PREFECT_HOME": str(work / "prefect-home"), "PREFECT_API_URL": api,
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"})
    processes.start([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                     str(port)], "prefect-server.log")

    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
        except OSError:
            return False

    _wait_for(healthy, 120, "the Prefect server")
    return api


def scan_on_cluster(workers: int, batch: Path, reference: Path, out: Path, settings: dict, work: Path) -> dict:
    """Start a scheduler and ``workers`` one-thread worker processes, scan on them, and read each worker's
    peak RSS before stopping them."""
    import resource

    from distributed import Client

    scheduler_file = work / f"scheduler-{workers}.json"
    scheduler_file.unlink(missing_ok=True)
    dask = str(Path(sys.executable).with_name("dask"))
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    cluster = Processes(work)
    try:
        cluster.start([dask, "scheduler", "--port", "0", *common], f"scheduler-{workers}.log")
        for i in range(workers):
            cluster.start([dask, "worker", "--nthreads", "1", "--nworkers", "1", "--memory-limit", "0", *common],
                          f"worker-{workers}-{i}.log")
        _wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, 60, "the scheduler")
        with Client(scheduler_file=str(scheduler_file), timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
            measured = _in_fresh_process("scan", batch, reference, out,
                                         settings | {"task_runner": "dask", "dask_address": client.scheduler.address})
            peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        measured["worker_peak_mb"] = max(peaks.values())
        return measured
    finally:
        cluster.stop()


def run(rows: int, features: int, chunk_rows: int, worker_counts: list[int], repeats: int, work: Path) -> list[dict]:
    batch, reference = make_data(rows, features, work, reference_rows=200_000)
    settings = {"chunk_rows": chunk_rows}
    runs: dict[int, list[dict]] = {1: [], **{n: [] for n in worker_counts}}
    server = Processes(work)
    try:
        prefect_server(work, server)
        for repeat in range(repeats):
            for workers in runs:
                out = work / f"out-{workers}-{repeat}"
                if workers == 1:
                    measured = _in_fresh_process("scan", batch, reference, out, settings | {"task_runner": "default"})
                    measured["worker_peak_mb"] = float("nan")
                else:
                    measured = scan_on_cluster(workers, batch, reference, out, settings, work)
                runs[workers].append(measured)
                print(f"{rows:,} rows, {'1 process' if workers == 1 else f'{workers} workers'}, run {repeat + 1}: "
                      f"{measured['seconds']:.1f} s, {measured['rows_quarantined']:,} quarantined", file=sys.stderr)
    finally:
        server.stop()
    quarantined = {m["rows_quarantined"] for measured in runs.values() for m in measured}
    if len(quarantined) != 1:
        raise RuntimeError(f"runs disagree on the rows quarantined: {sorted(quarantined)}")
    single = statistics.median(m["seconds"] for m in runs[1])
    table = []
    for workers, measured in runs.items():
        seconds = statistics.median(m["seconds"] for m in measured)
        table.append({
            "rows": rows, "workers": workers, "seconds": seconds, "rows_per_s": rows / seconds,
            "speed_up": single / seconds,
            "scan_peak_mb": statistics.median(m["peak_rss_mb"] for m in measured),
            "worker_peak_mb": statistics.median(m["worker_peak_mb"] for m in measured),
            "quarantined": measured[0]["rows_quarantined"],
            "score_s": statistics.median(m["steps"].get("score", 0.0) for m in measured),
        })
    return table


def to_markdown(table: list[dict], features: int, chunk_rows: int, repeats: int) -> str:
    lines = [
        f"{table[0]['rows']:,} rows x {features} features, read in chunks of {chunk_rows:,} rows; reference "
        f"200,000 rows; default detectors; one `prefect server start`. Medians of {repeats} run(s) on "
        f"{os.cpu_count()} cores. `1 process`: Prefect's default task runner. `N workers`: `dask scheduler` "
        "and N `dask worker` processes of one thread each; the scan's process reads, validates, flags and "
        "writes, and the workers score each chunk's slices. Every run quarantined "
        f"{table[0]['quarantined']:,} rows.",
        "",
        "| runner | scan s | rows/s | speed-up | score step s | scan process peak RSS MB | largest worker peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        name = "1 process" if r["workers"] == 1 else f"{r['workers']} workers"
        worker = "" if r["worker_peak_mb"] != r["worker_peak_mb"] else f"{r['worker_peak_mb']:,.0f}"
        lines.append(f"| {name} | {r['seconds']:,.1f} | {r['rows_per_s']:,.0f} | {r['speed_up']:.2f} "
                     f"| {r['score_s']:,.1f} | {r['scan_peak_mb']:,.0f} | {worker} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--workers", default="2,4", help="comma-separated Dask worker counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="where data and outputs go (default: temporary)")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args()
    workers = [int(n) for n in args.workers.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="poisonguard-scale-out-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        table = run(args.rows, args.features, args.chunk_rows, workers, args.repeats, work)
    markdown = to_markdown(table, args.features, args.chunk_rows, args.repeats)
    print(markdown)
    if args.write:
        from benchmarks.results import write_section

        write_section("scale_out", f"Scale-out: a chunked scan of {args.rows:,} rows on 1 process and on "
                      "a multi-process Dask cluster", markdown)


if __name__ == "__main__":
    main()
