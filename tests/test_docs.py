"""The documentation holds together: every relative link in the Markdown files points at a file (and a
heading) that exists, and the README's API summary keeps up with the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modeldeploy.crd import build_crd

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def _markdown_files() -> list[Path]:
    # Hidden directories hold the virtualenv and staging areas, whose Markdown is not ours.
    return sorted(
        path
        for path in ROOT.rglob("*.md")
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts)
    )


def _anchors(markdown: str) -> set[str]:
    """The ids GitHub gives a file's headings: lower case, punctuation dropped, spaces to hyphens, and a
    counter after repeats."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, count = slug, 0
        while candidate in anchors:
            count += 1
            candidate = f"{slug}-{count}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text()
    broken = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check offline
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif destination.suffix == ".md" and anchor and anchor not in _anchors(destination.read_text()):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_readme_api_summary_names_every_top_level_field() -> None:
    readme = (ROOT / "README.md").read_text()
    summary = readme.split("\n## API summary\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `(spec\.\w+|status)` \|", summary, re.M))
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    expected = {f"spec.{name}" for name in schema["spec"]["properties"]} | {"status"}
    assert rows == expected, f"README's API summary lists {sorted(rows)}, the API has {sorted(expected)}"


def test_readme_names_only_fields_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    reference = (ROOT / "docs" / "api-reference.md").read_text()
    documented = set(re.findall(r"^\| `((?:spec|status)\.[\w.\[\]]+)` \|", reference, re.M))
    named = set(re.findall(r"`((?:spec|status)\.[\w.]+)`", readme))
    assert documented and not named - documented, sorted(named - documented)
