"""Results on disk: JSON (everything), Markdown (the tables), and the README section that quotes them."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"


def benchmark_parser(
    prog: str, description: str, quick: str, readme: Path = README
) -> argparse.ArgumentParser:
    """A benchmark run's parser, with the options every run has: --quick (its help: `quick`), --out
    (where the results go) and --no-readme (leave `readme` as it is)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    shown = readme.relative_to(README.parent.parent)  # as the repository names it
    parser.add_argument("--no-readme", action="store_true", help=f"do not update {shown}")
    return parser


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())


def fmt(value: float | int | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:,.{digits}f}"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Repeated measurements (rounds' ratios) as their median, lowest and highest."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


def write_results(name: str, report: Any, markdown: str, readme: bool = True) -> None:
    """bench/results/<name>.json and <name>.md and, with ``readme``, bench/README.md's section ``name``."""
    write_json(RESULTS_DIR / f"{name}.json", report)
    (RESULTS_DIR / f"{name}.md").write_text(markdown + "\n")
    if readme:
        update_readme_section(name, markdown)


def update_readme_section(section: str, body: str, readme: Path = README) -> None:
    """Replace the text between `<!-- section:begin -->` and `<!-- section:end -->` (appended if absent)."""
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    current = readme.read_text(encoding="utf-8") if readme.exists() else ""
    block = f"{begin}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    updated = (
        pattern.sub(lambda _match: block, current)
        if pattern.search(current)
        else f"{current.rstrip()}\n\n{block}\n"
    )
    write_text(readme, updated.lstrip("\n"))


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure atomically as PNG (`palette_png`)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(path, palette_png(buffer.getvalue()))


def palette_png(png: bytes) -> bytes:
    """The image in 256 colours: a chart has few, and a third of full colour's bytes matters because the
    results travel with the working tree to a GPU machine, whose transfer limit `bench/gpu/stage.sh`
    counts to the byte."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
