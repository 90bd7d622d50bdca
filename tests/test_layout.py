"""Mirror paths: no upstream string can leave the root, hide a file or collide two photos."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.mirror.files import MirrorFS, UnsafePath
from syncer.mirror.layout import DEFAULT_LAYOUT, MAX_NAME_BYTES, Layout, LayoutError
from syncer.procore.models import Photo

LAYOUT = Layout(DEFAULT_LAYOUT)


def photo(**fields: Any) -> Photo:
    base: dict[str, Any] = {
        "id": 562950208716653,
        "url": None,
        "size": 1,
        "filename": "IMG_0001.JPG",
        "description": None,
        "taken_at": datetime(2026, 5, 6, 7, 5, 19, tzinfo=UTC),
        "created_at": None,
        "updated_at": None,
        "album_id": 4,
        "album_name": "Site Progress",
        "private": None,
        "starred": None,
        "width": None,
        "height": None,
        "gps_lat": None,
        "gps_long": None,
        "location_name": None,
        "uploader_name": None,
        "trades": (),
        "raw": {},
    }
    return Photo(**{**base, **fields})


def render(layout: Layout = LAYOUT, project: str = "Tower", **fields: Any) -> str:
    return layout.render(photo(**fields), project_name=project, project_id=9)


def assert_safe(rel: str) -> None:
    parts = rel.split("/")
    for part in parts:
        assert part and part not in (".", "..")
        assert not part.startswith("."), part
        assert not part.endswith((".", " ")), part
        assert len(part.encode("utf-8")) <= 255
        assert not any(ord(c) < 32 or c in '\\:*?"<>|\u202e\u2066' for c in part), part
        assert unicodedata.normalize("NFC", part) == part
        assert part.split(".")[0].upper() not in {"CON", "PRN", "AUX", "NUL", "COM1", "LPT1"}


def test_default_layout() -> None:
    assert render() == "Tower/Site Progress/2026-05/562950208716653_IMG_0001.JPG"


@pytest.mark.parametrize(
    ("fields", "expected_name"),
    [
        ({"filename": "../../etc/passwd"}, "562950208716653_.._.._etc_passwd"),
        ({"filename": "/abs/path.jpg"}, "562950208716653__abs_path.jpg"),
        ({"filename": "a\\b.jpg"}, "562950208716653_a_b.jpg"),
        ({"filename": "line\nbreak\r.jpg"}, "562950208716653_line_break_.jpg"),
        ({"filename": "trailing. . "}, "562950208716653_trailing"),
        ({"filename": None}, "562950208716653_photo"),
        ({"filename": "e\u0301te\u0301.jpg"}, "562950208716653_été.jpg"),
    ],
)
def test_hostile_file_names_stay_one_component(fields: dict[str, Any], expected_name: str) -> None:
    rel = render(**fields)
    assert rel.rsplit("/", 1)[1] == expected_name
    assert_safe(rel)


@pytest.mark.parametrize(
    "album", ["..", ".", "/", "../../..", ".hidden", "CON", "nul.txt", "lpt1", " ", "\x00"]
)
def test_hostile_album_names_are_made_safe(album: str) -> None:
    rel = render(album_name=album)
    assert rel.count("/") == 3
    assert_safe(rel)


@pytest.mark.parametrize("project", ["../outside", "/etc", "Com1", "a/b/c", "\u202eevil"])
def test_hostile_project_names_are_made_safe(project: str) -> None:
    rel = render(project=project)
    assert rel.count("/") == 3
    assert_safe(rel)


def test_over_long_names_are_cut_keeping_id_and_extension() -> None:
    rel = render(filename="é" * 400 + ".jpeg", album_name="A" * 300)
    album, name = rel.split("/")[1], rel.split("/")[-1]
    assert len(album.encode()) <= 255
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert name.startswith("562950208716653_") and name.endswith(".jpeg")
    assert_safe(rel)


def test_layout_with_id_late_in_the_name_still_keeps_it_when_cut() -> None:
    layout = Layout("{album}/{filename}-{id}")
    rel = layout.render(photo(filename="x" * 600 + ".jpg"), project_name="P", project_id=1)
    assert rel.endswith("-562950208716653")
    assert_safe(rel)


def test_undated_photos_get_an_undated_folder() -> None:
    assert render(taken_at=None).split("/")[2] == "undated"


def test_photos_without_album_go_to_unfiled() -> None:
    assert render(album_name=None).split("/")[1] == "Unfiled"


def test_two_photos_with_the_same_name_never_share_a_path() -> None:
    assert render(id=1, filename="photo.jpg") != render(id=2, filename="photo.jpg")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{project}/{filename}", "must contain {id}"),
        ("/{id}", "relative"),
        ("{project}//{id}", "empty folder level"),
        ("{nope}/{id}", "unknown field"),
        ("{album:%Y}/{id}", "takes no format"),
        ("{id!r}", "conversions"),
        ("{id", "cannot parse"),
    ],
)
def test_bad_layouts_are_refused(template: str, message: str) -> None:
    with pytest.raises(LayoutError, match=message):
        Layout(template)


text = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)


@settings(max_examples=300, deadline=None)
@given(filename=text, album=text, project=text, location=text)
def test_any_upstream_strings_give_a_safe_unique_path(
    filename: str, album: str, project: str, location: str
) -> None:
    layout = Layout("{project}/{album}/{location}/{taken:%Y}/{id}_{filename}")
    a = layout.render(
        photo(filename=filename, album_name=album, location_name=location), project_name=project, project_id=1
    )
    b = layout.render(
        photo(id=2, filename=filename, album_name=album, location_name=location),
        project_name=project,
        project_id=1,
    )
    assert_safe(a)
    assert a.count("/") == 4
    assert a != b


def test_mirror_refuses_paths_through_a_planted_link(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "mirror"
    root.mkdir()
    (root / "Tower").symlink_to(outside)
    fs = MirrorFS(root)
    try:
        with pytest.raises(UnsafePath):
            fs.path("Tower/x.jpg")
        for bad in ["../x", "/x", "a/../../x", ".syncer/x", "a//b"]:
            with pytest.raises(UnsafePath):
                fs.path(bad)
    finally:
        fs.close()
