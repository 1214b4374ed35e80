"""``benchmarks/RESULTS.md`` holds one section per benchmark; each benchmark rewrites only its own."""

from __future__ import annotations

import re
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TITLE = "# Benchmark results\n\nEach section is rewritten by the command it names; nothing here is typed by hand.\n"


def write_section(name: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Replace the section ``name`` of ``path`` (or append it) with ``title``, the command, versions, ``body``."""
    from poisonguard.report import versions
    from poisonguard.store import atomic_write_text

    command = f"python -m benchmarks.{name} {' '.join(sys.argv[1:])}".rstrip()
    section = "\n".join([
        f"<!-- {name}:start -->",
        f"## {title}",
        "",
        f"Command: `{command}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "",
        body.rstrip(),
        f"<!-- {name}:end -->",
    ])
    text = path.read_text(encoding="utf-8") if path.exists() else TITLE
    if not text.startswith(TITLE):
        text = TITLE  # the file from before sections existed: start it afresh
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(path, text)
