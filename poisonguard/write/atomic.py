"""Atomic writes of every file poisonguard produces.

Each file is written to a temporary sibling, flushed to disk and renamed over its final name, so a crash
or an error mid-write leaves either the previous complete file or nothing, never a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def staged_file(final: Path) -> Path:
    """Create an empty temporary file beside ``final`` (same directory, so the rename is atomic), with the
    mode a plainly created file would get: ``mkstemp`` makes it 0600 whatever the umask, and a training job
    running as another user could not read ``clean/``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(handle, 0o666 & ~_umask())
    finally:
        os.close(handle)
    return Path(name)


def _umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it, which for
    an instant changes it for every thread."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def sync_file(temporary: Path) -> None:
    """Flush ``temporary``'s bytes to disk (a full disk shows here, before anything is renamed)."""
    with temporary.open("rb+") as written:
        os.fsync(written.fileno())


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success rename it to ``final``, on error remove it."""
    final = Path(final)
    temporary = staged_file(final)
    try:
        yield temporary
        sync_file(temporary)
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: Path, frame: pd.DataFrame | pa.Table, metadata: dict[str, str] | None = None) -> None:
    """Write ``frame`` (without its index) as one Parquet file at ``path``, with optional key/value metadata.

    Not atomic by itself: use :func:`atomic_write_parquet` or :func:`write_all_or_none` around it.
    """
    table = parquet_table(frame, metadata)
    pq.write_table(table, path, **writer_options(table.schema))


def parquet_table(frame: pd.DataFrame | pa.Table, metadata: dict[str, str] | None = None) -> pa.Table:
    """``frame`` (without its index) as the Arrow table poisonguard writes, with key/value ``metadata``."""
    table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
    # The Arrow schema alone describes the columns; pandas' own metadata would record dtype names such as
    # "list<item: string>[pyarrow]" that pandas itself cannot read back, and that other readers ignore.
    kept = {k: v for k, v in (table.schema.metadata or {}).items() if k != b"pandas"}
    kept.update({k.encode(): v.encode() for k, v in (metadata or {}).items()})
    return table.replace_schema_metadata(kept)


def writer_options(schema: pa.Schema) -> dict[str, Any]:
    """Options for writing tables of ``schema``: dictionary encoding for every column but floating-point ones.

    Measured on 1M rows x 20 float columns, dictionary encoding floats took four fifths of the write time
    (1.06 s against 0.26 s) and made the file larger (197 MB against 156 MB): continuous values overflow the
    dictionary page, and the writer starts over with plain encoding. Labels, ids and text keep it.
    """
    leaves = [leaf for field in schema for leaf in _leaves(field.name, field.type)]
    return {"use_dictionary": [path for path, kind in leaves if not pa.types.is_floating(kind)]}


def _leaves(path: str, kind: pa.DataType) -> list[tuple[str, pa.DataType]]:
    """Parquet's dotted path (``reasons.list.element``) and Arrow type of each leaf column under ``path``."""
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _leaves(f"{path}.list.element", kind.value_type)
    if pa.types.is_struct(kind):
        return [leaf for child in kind for leaf in _leaves(f"{path}.{child.name}", child.type)]
    return [(path, kind)]


def atomic_write_parquet(path: Path, frame: pd.DataFrame, metadata: dict[str, str] | None = None) -> Path:
    with atomic_path(path) as temporary:
        write_parquet(temporary, frame, metadata)
    return Path(path)


def atomic_copy(source: Path, destination: Path) -> Path:
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)
    return Path(destination)


def write_all_or_none(writers: list[tuple[Path, Callable[[Path], Any]]]) -> list[Path]:
    """Run each ``writer(temporary_path)`` and rename all results into place only if every one succeeded.

    A failure in any writer removes every temporary file and leaves the final paths as they were.
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for final, writer in writers:
            temporary = staged_file(Path(final))
            staged.append((temporary, Path(final)))
            writer(temporary)
            sync_file(temporary)
    except BaseException:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
        raise
    for temporary, final in staged:
        os.replace(temporary, final)
    return [final for _, final in staged]
