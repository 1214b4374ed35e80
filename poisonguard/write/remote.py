"""Each batch's outputs copied to object storage (``publish_url``: ``s3://bucket/prefix``, any fsspec URL),
for readers off this machine, all or none.

The output directory on local disk stays the scan's working area: the replay ledger is SQLite and the audit
log is appended and fsynced, neither of which an object store offers, and review reads and writes there.
What training reads is copied: the batch's clean and quarantine Parquet (or its rejected raw file), files
reviewers released, and its JSON and HTML reports, under the same relative paths; then, last, the dataset's
listing ``clean/<dataset>/_committed.json`` (see :mod:`poisonguard.write.committed`). One object is written
whole or not at all, so a reader that goes by the listing sees every file of a batch or none of it: a copy
interrupted halfway leaves files the listing does not name, and the next scan or decision of the batch
copies them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from poisonguard.write.committed import listing_lock, listing_path
from poisonguard.write.outputs import released_glob


def batch_files(out_dir: Path, report: dict[str, Any], reports_only: bool = False) -> list[Path]:
    """The local files of the batch of ``report`` that readers elsewhere need, listing excluded (its reports
    alone with ``reports_only``)."""
    out_dir, dataset, batch_id = Path(out_dir), report["dataset"], report["batch_id"]
    files = []
    if not reports_only:
        files += [out_dir / relative for relative in (report.get("outputs") or {}).values()
                  if isinstance(relative, str) and (out_dir / relative).is_file()]
        files += sorted((out_dir / "clean" / dataset).glob(released_glob(batch_id)))
    reports = out_dir / "reports" / dataset
    files += [path for path in (reports / f"{batch_id}.json", reports / f"{batch_id}.html") if path.exists()]
    return files


def publish_batch(out_dir: Path, report: dict[str, Any], url: str, reports_only: bool = False) -> list[str]:
    """Copy the batch's outputs to ``url``, then the dataset's listing; the URLs written, listing last.
    ``reports_only``: copy its JSON and HTML reports alone (after a report was brought up to date)."""
    from fsspec.core import url_to_fs

    out_dir, url = Path(out_dir), url.rstrip("/")
    fs, root = url_to_fs(url)
    root = root.rstrip("/")

    def copy(path: Path) -> str:
        relative = path.relative_to(out_dir).as_posix()
        fs.makedirs(f"{root}/{relative.rsplit('/', 1)[0]}", exist_ok=True)  # a local target needs its folder
        fs.put_file(str(path), f"{root}/{relative}")
        return f"{url}/{relative}"

    written = [copy(path) for path in batch_files(out_dir, report, reports_only)]
    listing = listing_path(out_dir, report["dataset"])
    if not reports_only and listing.exists():
        # Under the listing's own lock: two scans of one dataset publishing at once copy the listing in the
        # order they wrote it, so the copy is never older than a batch whose files are already there.
        with listing_lock(out_dir, report["dataset"]):
            written.append(copy(listing))
    return written
