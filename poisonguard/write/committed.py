"""The training reader's view of ``clean/<dataset>/``: ``_committed.json``, the files that are complete.

A scan writes its clean and quarantine Parquet files first, then its report, then its ledger row; a crash
or a full disk between those steps left clean rows on disk with no report or ledger row, and a reader of
``clean/<dataset>/*.parquet`` could not tell. The listing is rewritten (atomically, under a lock, since
scans of one dataset may run at once) as the last step of every scan and every review release, so a file
is listed only once everything about its batch is written. Readers load exactly the files it lists::

    listing = json.loads((out / "clean" / "loans" / "_committed.json").read_text())
    frame = pd.read_parquet([out / "clean" / "loans" / name for name in listing["files"]])

The name starts with ``_``, which pyarrow's and Spark's dataset readers skip. Each update recomputes a
batch's entry from what is durable (its report and its released files), so a later scan or decision of the
batch repairs a listing that a crash left behind.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock

from poisonguard.provenance.ledger import DELIVERED
from poisonguard.write.atomic import atomic_write_json
from poisonguard.write.outputs import released_glob

LISTING = "_committed.json"


def listing_path(out_dir: Path, dataset: str) -> Path:
    return Path(out_dir) / "clean" / dataset / LISTING


def listing_lock(out_dir: Path, dataset: str) -> FileLock:
    """The lock every writer (and copier, :mod:`poisonguard.write.remote`) of the dataset's listing holds."""
    return FileLock(Path(out_dir) / "clean" / dataset / f".{LISTING}.lock", timeout=600)


def read_listing(out_dir: Path, dataset: str) -> dict[str, Any]:
    """The dataset's listing; an empty one when no batch has been committed yet."""
    path = listing_path(out_dir, dataset)
    if not path.exists():
        return {"dataset": dataset, "batches": {}, "files": []}
    return json.loads(path.read_text(encoding="utf-8"))


def committed_files(out_dir: Path, dataset: str) -> list[Path]:
    """Every clean file of ``dataset`` that training may read, in the listing's order."""
    folder = Path(out_dir) / "clean" / dataset
    return [folder / name for name in read_listing(out_dir, dataset)["files"]]


def list_batch(out_dir: Path, report: dict[str, Any]) -> None:
    """Bring the batch of ``report`` (a scan's JSON report, once written) up to date in its dataset's
    listing: its clean file when it was delivered, and the files of rows reviewers released."""
    out_dir, dataset, batch_id = Path(out_dir), report["dataset"], report["batch_id"]
    folder = out_dir / "clean" / dataset
    entry = None
    clean = (report.get("outputs") or {}).get("clean")
    # A released file is renamed into place only after its audit entry is durable: each one is final. A
    # batch rejected whole has released files only once a reviewer releases its rows (a fixed manifest).
    files = sorted(p.name for p in folder.glob(released_glob(batch_id)))
    if report.get("status") in DELIVERED and clean and (out_dir / clean).exists():
        files = [Path(clean).name, *files]
    if files:
        entry = {
            "files": files,
            "scanned_at": report.get("scanned_at"),
            "status": report["status"],
            "rows_clean": (report.get("rows") or {}).get("clean"),
        }
    if entry is None and not listing_path(out_dir, dataset).exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with listing_lock(out_dir, dataset):
        listing = read_listing(out_dir, dataset)
        if listing["batches"].get(batch_id) == entry:
            return
        if entry is None:
            listing["batches"].pop(batch_id, None)
        else:
            listing["batches"][batch_id] = entry
        listing["files"] = [name for _, batch in sorted(listing["batches"].items()) for name in batch["files"]]
        listing["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(listing_path(out_dir, dataset), listing)
