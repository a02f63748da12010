"""The documentation against the code it describes.

docs/configuration.md is the knob reference: one row per key of pyproject.toml's
``[tool.flwr.app.config]``, with the same default, so a knob added, renamed or re-defaulted
without its row (or a row left behind) fails here. The README stays a short entry point that
starts with the two commands, and every relative link in README.md and docs/ leads somewhere.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
REFERENCE = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
README_MAX_BYTES = 15_000

HEADER = ["key", "default", "meaning"]
# A table cell boundary: a pipe not escaped as \| (a literal pipe inside a cell).
CELL_SPLIT = re.compile(r"(?<!\\)\|")
BACKTICKED = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
TWO_COMMANDS = re.compile(r"\A# fedbuff-deploy\n\n```sh\nmake run +# [^\n]+\nmake test +# [^\n]+\n```\n")


def app_config(pyproject: Path = PYPROJECT) -> dict[str, object]:
    return tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in CELL_SPLIT.split(line.strip().strip("|"))]


def documented_rows(reference: Path = REFERENCE) -> list[tuple[str, str]]:
    """(key, default as written) of every row of every `| key | default | meaning |` table."""
    rows: list[tuple[str, str]] = []
    in_table = False
    for line in reference.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = _cells(line)
        if cells == HEADER:
            in_table = True
            continue
        if not in_table or set("".join(cells)) <= set("-: "):
            continue
        key, default = (BACKTICKED.fullmatch(cell) for cell in cells[:2])
        assert key and default, f"{reference.name}: a row whose key or default is not in backticks: {line}"
        rows.append((key.group(1), default.group(1)))
    return rows


def parse_default(text: str) -> object:
    return tomllib.loads(f"v = {text}")["v"]


def check_reference(pyproject: Path = PYPROJECT, reference: Path = REFERENCE) -> None:
    config = app_config(pyproject)
    rows = documented_rows(reference)
    counts: dict[str, int] = {}
    for key, _ in rows:
        counts[key] = counts.get(key, 0) + 1
    missing = sorted(set(config) - set(counts))
    assert not missing, f"knobs in pyproject.toml without a row in docs/configuration.md: {missing}"
    repeated = sorted(key for key, n in counts.items() if n > 1)
    assert not repeated, f"knobs with more than one row in docs/configuration.md: {repeated}"
    unknown = sorted(set(counts) - set(config))
    assert not unknown, f"rows in docs/configuration.md for keys pyproject.toml does not have: {unknown}"
    wrong = []
    for key, text in rows:
        documented, actual = parse_default(text), config[key]
        # the type too: 900 for 900.0 would be a different TOML literal (and a different knob type)
        if type(documented) is not type(actual) or documented != actual:
            wrong.append(f"{key}: documented {text}, pyproject.toml has {actual!r}")
    assert not wrong, "defaults that differ from pyproject.toml:\n" + "\n".join(wrong)


def test_every_knob_has_one_row_with_its_default() -> None:
    check_reference()


def test_the_reference_has_the_tables_it_is_read_from() -> None:
    rows = documented_rows()
    assert len(rows) > 50
    assert ("strategy", '"fedbuff"') in rows


def test_parse_default_reads_toml_literals() -> None:
    assert parse_default('"fedbuff"') == "fedbuff"
    assert parse_default('""') == ""
    assert parse_default("true") is True
    assert parse_default("1e-05") == 1e-05
    assert isinstance(parse_default("900.0"), float)
    assert isinstance(parse_default("6"), int)


def test_readme_is_short_and_starts_with_the_two_commands() -> None:
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move details to docs/ (limit {README_MAX_BYTES})"
    assert TWO_COMMANDS.match(README.read_text()), (
        "README.md must start with its title and the make run / make test block"
    )


def relative_links(page: Path) -> list[str]:
    """The relative link targets of a Markdown page, without anchors; code is not read for links."""
    text = INLINE_CODE.sub("", FENCE.sub("", page.read_text()))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, mailto:, or an anchor on the same page
        targets.append(target.split("#", 1)[0])
    return targets


def test_relative_links_point_to_existing_files() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in relative_links(page)
        if not (page.parent / target).exists()
    ]
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
