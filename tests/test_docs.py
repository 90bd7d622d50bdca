"""The manual against the code: what README.md, docs/ and bench/README.md promise a reader is
checked here, so that a new configuration key, a new kind of error or a moved heading cannot
leave the pages behind without a failing test."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import syncer
from syncer.coordination.membership import LeaseLost
from syncer.errors import (
    ConfigError,
    DatabaseError,
    ExitCode,
    FatalError,
    LocalFault,
    LockedError,
    MirrorMissing,
    NothingYet,
    NotTheOwner,
    SyncerError,
)
from syncer.procore.api import IncompleteListing
from syncer.procore.auth import AuthError
from syncer.procore.http import ProcoreError, TransientError, Unreachable, UntrustedServer
from syncer.procore.models import BadRecord
from tests.test_deploy import example_keys, settings_keys

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
MANUAL = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "bench" / "README.md"]
README_LIMIT = 10 * 1024

ENTRIES: dict[type[SyncerError], tuple[str, ...]] = {
    ConfigError: (
        "The command line is wrong",
        "The configuration is refused",
        "Procore does not show the company",
        "Procore does not show the projects",
        "PostgreSQL needs the extra",
        "syncer login did not finish",
        "The CSV cannot be written",
    ),
    AuthError: ("The client credentials are refused", "The saved sign-in is refused or missing"),
    LockedError: (
        "Another run holds the project or the mirror",
        "verify --move-strays needs the mirror to itself",
    ),
    MirrorMissing: (
        "The disk or share is not mounted",
        "Another mirror is mounted there",
        "The mirror's id cannot be read",
    ),
    LocalFault: ("The disk, a folder or the database cannot be written",),
    NothingYet: ("Nothing synced yet",),
    NotTheOwner: ("The mirror belongs to another user",),
    DatabaseError: ("The database cannot be reached",),
    LeaseLost: ("A worker lost its lease",),
    UntrustedServer: ("A server's TLS certificate is not trusted",),
    Unreachable: ("A host is unknown, or TLS with it fails",),
    TransientError: ("Procore could not be reached, after retries",),
    ProcoreError: ("Procore answered with an error",),
    IncompleteListing: ("Procore's project listing is short",),
    BadRecord: ("A record Procore sent cannot be read",),
}
"""Each class of one-line error, and its entries (`###` headings) in docs/troubleshooting.md under
the section of its exit code. A new `SyncerError` subclass fails the test until it is named here
with an entry of its own."""
BASES = {SyncerError, FatalError}
"""Classes only ever raised through a subclass: they carry no message of their own."""


# -- reading markdown ----------------------------------------------------------------------------


def without_code_blocks(text: str) -> str:
    """The text without its fenced code blocks, where a `#` line or a link is only text."""
    return re.sub(r"^ *```.*?^ *```", "", text, flags=re.DOTALL | re.MULTILINE)


def prose(text: str) -> str:
    """The text without code blocks and inline code: what is read as markdown."""
    return re.sub(r"`[^`\n]*`", "", without_code_blocks(text))


def headings(text: str) -> Iterator[tuple[int, str]]:
    """Each heading's level and its text as shown (no backticks or link syntax)."""
    for match in re.finditer(r"^(#{1,6}) +(.+?) *#*$", without_code_blocks(text), re.MULTILINE):
        shown = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        yield len(match.group(1)), shown


def anchors(text: str) -> set[str]:
    """The anchors a heading gets where the pages are read (GitHub): lower case, punctuation
    dropped, spaces as hyphens, `-1`, `-2` added to repeats."""
    seen: dict[str, int] = {}
    found = set()
    for _, shown in headings(text):
        slug = re.sub(r"[^\w\- ]", "", shown.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def sections(text: str, level: int) -> dict[str, str]:
    """The text under each heading of `level`, by the heading as shown, up to the next heading
    of that level."""
    parts = re.split(rf"^({'#' * level} .+)$", without_code_blocks(text), flags=re.MULTILINE)
    return {next(headings(head))[1]: body for head, body in zip(parts[1::2], parts[2::2], strict=True)}


def links(page: Path) -> Iterator[tuple[str, str]]:
    """Each relative link (and image) of a page: its target path and anchor ("" for none)."""
    for target in re.findall(r"\]\(([^)\s]+)(?: +\"[^\"]*\")?\)", prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        yield path, anchor


# -- the pages -----------------------------------------------------------------------------------


def test_the_readme_stays_short_and_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    size = len(text.encode())
    assert size <= README_LIMIT, f"README.md is {size:,} bytes; move detail into docs/"
    first_block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    assert text.index(first_block.group(0)) < text.index("\n## ")


def test_every_relative_link_in_the_manual_points_to_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in MANUAL:
        for path, anchor in links(page):
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)}: {path} does not exist")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {path}#{anchor} names no heading there")
    assert broken == []


# -- docs/configuration.md -----------------------------------------------------------------------


def documented_keys() -> tuple[set[str], set[str]]:
    """The keys docs/configuration.md has an entry for: the rows of its key tables (the first
    cell, one key or a few related ones), and its sections, which are `##` headings."""
    text = (DOCS / "configuration.md").read_text()
    rows = set()
    for table in re.findall(r"^\| key \|.*\n\|[-| ]+\|\n((?:\|.*\n?)*)", text, re.M):
        for row in table.splitlines():
            rows |= set(re.findall(r"`([^`]+)`", row.split("|")[1]))
    return rows, {shown for level, shown in headings(text) if level == 2}


def test_the_configuration_page_has_an_entry_for_every_key() -> None:
    rows, section_headings = documented_keys()
    live, commented = example_keys()
    keys = settings_keys().keys() | live | commented
    missing = {key for key in keys if key not in (section_headings if "." not in key else rows)}
    assert missing == set()


def test_the_configuration_page_names_no_key_that_does_not_exist() -> None:
    rows, _ = documented_keys()
    assert rows - settings_keys().keys() == set()


# -- docs/troubleshooting.md ---------------------------------------------------------------------


def error_classes() -> set[type[SyncerError]]:
    """Every `SyncerError` subclass the syncer defines, found by importing all of its modules."""
    for module in pkgutil.walk_packages(syncer.__path__, "syncer."):
        if module.name != "syncer.__main__":
            importlib.import_module(module.name)
    found: set[type[SyncerError]] = set()
    todo = [SyncerError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {cls for cls in found if cls.__module__.startswith("syncer.")} - BASES


def exit_code_sections() -> dict[int, str]:
    text = (DOCS / "troubleshooting.md").read_text()
    by_code = {}
    for head, body in sections(text, 2).items():
        if match := re.match(r"Exit code (\d+)\b", head):
            by_code[int(match.group(1))] = body
    return by_code


def test_troubleshooting_has_a_section_for_every_exit_code() -> None:
    assert exit_code_sections().keys() == {int(code) for code in ExitCode}


def test_troubleshooting_has_an_entry_for_every_error_under_its_exit_code() -> None:
    missing = []
    by_code = exit_code_sections()
    for cls in sorted(error_classes(), key=lambda cls: cls.__name__):
        entries = ENTRIES.get(cls)
        if not entries:
            missing.append(f"{cls.__name__}: not in ENTRIES")
            continue
        section = by_code.get(int(cls.exit_code), "")
        found = {shown for level, shown in headings(section) if level == 3}
        missing += [
            f"{cls.__name__}: no entry {e!r} under exit code {int(cls.exit_code)}"
            for e in entries
            if e not in found
        ]
    assert missing == []


def test_each_troubleshooting_entry_belongs_to_one_error() -> None:
    named = [entry for entries in ENTRIES.values() for entry in entries]
    assert len(named) == len(set(named))


def test_the_error_bases_are_never_raised_themselves() -> None:
    names = {cls.__name__ for cls in BASES}
    made = [
        f"{source.relative_to(ROOT)}:{node.lineno}: {node.func.id}(...)"
        for source in (ROOT / "syncer").rglob("*.py")
        for node in ast.walk(ast.parse(source.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names
    ]
    assert made == []
