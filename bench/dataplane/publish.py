"""Bring a data-plane run made elsewhere (a lent GPU machine's $OUT) into bench/results and bench/README.md.

    .venv/bin/python -m bench.dataplane.publish DIR [--commit SHA]

Each `dataplane-*.json` in DIR (a data-plane run or a profile) is copied with its PNG, its Markdown is
rendered again from the JSON, and the README section of the same name is replaced, prefixed with the
commit that was measured (the machine has no git history: stage.sh records it, measure.sh returns it as
DIR/commit).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from bench.common.report import README, RESULTS_DIR, update_readme_section, write_json, write_text
from bench.dataplane import profile
from bench.dataplane.report import render_markdown


def publish(directory: Path, commit: str, results: Path = RESULTS_DIR, readme: Path = README) -> list[str]:
    reports = sorted(directory.glob("dataplane-*.json"))
    if not reports:
        raise SystemExit(f"no dataplane-*.json in {directory}")
    sections = []
    for path in reports:
        report = json.loads(path.read_text())
        if report.get("quick"):
            raise SystemExit(f"{path.name} is a --quick run; it does not replace published results")
        renderer = (
            profile.render_markdown if report.get("benchmark") == "dataplane-profile" else render_markdown
        )
        markdown = f"Commit measured: `{commit}`.\n\n" + renderer(report)
        write_json(results / path.name, report)
        write_text(results / path.with_suffix(".md").name, markdown)
        if path.with_suffix(".png").exists():
            shutil.copyfile(path.with_suffix(".png"), results / path.with_suffix(".png").name)
        update_readme_section(path.stem, markdown, readme)
        sections.append(path.stem)
    return sections


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dataplane.publish", description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--commit", help="the commit the run measured (default: DIR/commit, from stage.sh)")
    args = parser.parse_args(argv)
    commit_file = args.directory / "commit"
    commit = args.commit or (commit_file.read_text().strip() if commit_file.exists() else None)
    if not commit:
        parser.error(f"no --commit and no {commit_file}")
    for section in publish(args.directory, commit):
        print(f"published {section}")


if __name__ == "__main__":
    main()
