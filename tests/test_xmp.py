"""XMP sidecars for photo tools, read back by a real reader (`exiftool`, Debian's
libimage-exiftool-perl, which `.ci/run` installs where missing)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from syncer.config import Settings
from syncer.errors import ExitCode
from syncer.mirror.xmp import xmp_bytes, xmp_path
from syncer.procore.models import Photo
from syncer.simulator import Simulator
from tests.conftest import sync, write_config
from tests.test_cli import syncer

pytestmark = pytest.mark.skipif(
    shutil.which("exiftool") is None, reason="exiftool (Debian's libimage-exiftool-perl) is not installed"
)


def exiftool(path: Path) -> dict[str, Any]:
    """Every tag exiftool reads from `path`, by group and name, as numbers where they are numbers."""
    out = subprocess.run(
        ["exiftool", "-json", "-G1", "-n", "-struct", str(path)], capture_output=True, text=True, check=True
    ).stdout
    tags: dict[str, Any] = json.loads(out)[0]
    return tags


def photos_with_sidecars(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(photo, its JSON sidecar's record) for every photo in the mirror proper."""
    found = []
    for sidecar in sorted(root.rglob("*.json")):
        if sidecar.relative_to(root).parts[0] in (".syncer", ".trash"):
            continue
        found.append((sidecar.with_name(sidecar.name.removesuffix(".json")), json.loads(sidecar.read_text())))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [] if value is None else [value]


def settings_with_xmp(settings_for: Any, sim: Simulator, naming: str = "append", **sections: Any) -> Settings:
    mirror = {"xmp": naming, **sections.pop("mirror", {})}
    settings: Settings = settings_for(sim, mirror=mirror, **sections)
    return settings


async def test_every_field_of_the_xmp_sidecar_is_read_back_by_exiftool(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=30, projects=1)
    starred = min(sim.company.photos)
    sim.edit_photo(starred, starred=True, gps=(47.6062, -122.3321))
    settings = settings_with_xmp(settings_for, sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    checked = 0
    for photo, document in photos_with_sidecars(settings.mirror.root):
        record = document["procore"]
        tags = exiftool(photo.with_name(photo.name + ".xmp"))
        assert tags.get("XMP-dc:Description", "") == (record.get("description") or "")
        assert as_list(tags.get("XMP-dc:Creator")) == [record["uploader"]["name"]]
        keywords = as_list(tags.get("XMP-dc:Subject"))
        for trade in record.get("trades") or []:
            assert trade["name"] in keywords and f"Trade|{trade['name']}" in as_list(
                tags.get("XMP-lr:HierarchicalSubject")
            )
        if record.get("location"):
            wanted = "Location|" + "|".join(p.strip() for p in record["location"]["node_name"].split(">"))
            assert wanted in as_list(tags.get("XMP-lr:HierarchicalSubject"))
        if record.get("image_category_name"):
            assert record["image_category_name"] in keywords
        taken = (record.get("taken_at") or record["created_at"]).replace("-", ":").replace("T", " ")
        assert str(tags["XMP-exif:DateTimeOriginal"]).startswith(taken[:19])
        assert tags["XMP-pps:PhotoId"] == record["id"]
        assert tags["XMP-pps:ProjectId"] == document["project"]["id"]
        assert tags["XMP-pps:Link"] == f"https://app.procore.com/{document['project']['id']}/project/photos"
        if record.get("starred"):
            assert tags["XMP-xmp:Rating"] == 5 and tags["XMP-xmp:Label"] == "Starred"
        else:
            assert "XMP-xmp:Rating" not in tags
        if record.get("gps_lat") is not None:
            assert abs(tags["XMP-exif:GPSLatitude"] - record["gps_lat"]) < 1e-5
            assert abs(tags["XMP-exif:GPSLongitude"] - record["gps_long"]) < 1e-5
        if record["id"] == starred:
            assert tags["XMP-xmp:Rating"] == 5 and abs(tags["XMP-exif:GPSLongitude"] + 122.3321) < 1e-5
        assert hashlib.sha256(photo.read_bytes()).hexdigest() == document["file"]["sha256"], "bytes untouched"
        checked += 1
    assert checked == 30


async def test_lightroom_naming_replaces_the_extension(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(photos=3, projects=1)
    settings = settings_with_xmp(settings_for, sim, "replace")
    assert (await sync(settings)).exit_code == ExitCode.OK
    for photo, document in photos_with_sidecars(settings.mirror.root):
        xmp = photo.with_suffix(".xmp")
        assert exiftool(xmp)["XMP-pps:PhotoId"] == document["procore"]["id"]
        assert not photo.with_name(photo.name + ".xmp").exists()


async def test_a_description_that_is_markup_is_text_and_the_xmp_still_parses(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=2, projects=1)
    planted = min(sim.company.photos)
    hostile = '</rdf:li></rdf:Alt><script>alert("x")</script> & \x01\x1b "quoted" <![CDATA[ ]]>'
    sim.edit_photo(planted, description=hostile)
    settings = settings_with_xmp(settings_for, sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    (photo,) = [p for p, d in photos_with_sidecars(settings.mirror.root) if d["procore"]["id"] == planted]
    tags = exiftool(photo.with_name(photo.name + ".xmp"))
    assert tags["XMP-dc:Description"] == hostile.replace("\x01", "").replace("\x1b", "")


async def test_a_metadata_edit_rewrites_the_xmp_without_a_download(make_sim: Any, settings_for: Any) -> None:
    sim = await make_sim(photos=3, projects=1)
    settings = settings_with_xmp(settings_for, sim)
    assert (await sync(settings)).exit_code == ExitCode.OK
    edited = min(sim.company.photos)
    fetched = sum(sim.stats.file_requests.values())
    sim.edit_photo(edited, description="after the pour")
    assert (await sync(settings)).exit_code == ExitCode.OK
    assert sum(sim.stats.file_requests.values()) == fetched, "no download for a metadata edit"
    (photo,) = [p for p, d in photos_with_sidecars(settings.mirror.root) if d["procore"]["id"] == edited]
    assert exiftool(photo.with_name(photo.name + ".xmp"))["XMP-dc:Description"] == "after the pour"


async def test_the_xmp_moves_with_its_photo_and_goes_to_the_trash_with_it(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=6, projects=1)
    settings = settings_with_xmp(settings_for, sim, mirror={"on_delete": "trash"})
    assert (await sync(settings)).exit_code == ExitCode.OK
    moved = next(p for p in sim.company.photos.values() if p.album_id is not None)
    other = next(
        a for a in sim.company.albums.values() if a.project_id == moved.project_id and a.id != moved.album_id
    )
    sim.edit_photo(moved.id, album_id=other.id)
    gone = max(sim.company.photos)
    sim.delete_photo(gone)
    assert (await sync(settings, full=True)).exit_code == ExitCode.OK
    root = settings.mirror.root
    xmps = {p.relative_to(root).as_posix() for p in root.rglob("*.xmp")}
    live = [p for p, _ in photos_with_sidecars(root)]
    assert {f"{p.relative_to(root).as_posix()}.xmp" for p in live} == {
        x for x in xmps if not x.startswith(".trash/")
    }
    (trashed,) = [x for x in xmps if x.startswith(".trash/")]
    assert exiftool(root / trashed)["XMP-pps:PhotoId"] == gone
    (now,) = [p for p, d in photos_with_sidecars(root) if d["procore"]["id"] == moved.id]
    assert f"/{other.name}/" in now.as_posix()


async def test_verify_finds_a_missing_xmp_and_fix_writes_it(make_sim: Any, tmp_path: Path) -> None:
    sim = await make_sim(photos=3, projects=1)
    config = str(write_config(sim, tmp_path, mirror={"xmp": "append"}))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    xmp = sorted((tmp_path / "mirror").rglob("*.xmp"))[0]
    xmp.unlink()
    rel = xmp.relative_to(tmp_path / "mirror").as_posix()
    run = await syncer("verify", "--config", config)
    assert run.code == ExitCode.INCOMPLETE and f"missing sidecar: {rel}" in run.out, run.out
    run = await syncer("verify", "--config", config, "--fix")
    assert run.code == ExitCode.OK, run.out
    assert exiftool(xmp)["XMP-pps:PhotoId"] > 0
    assert (await syncer("verify", "--config", config)).code == ExitCode.OK


def test_lightroom_naming_appends_for_a_photo_whose_own_extension_is_xmp() -> None:
    assert xmp_path("P/1_IMG.JPG", "replace") == "P/1_IMG.xmp"
    assert xmp_path("P/1_scan.XMP", "replace") == "P/1_scan.XMP.xmp", "never the photo itself"
    assert xmp_path("P/1_noext", "replace") == "P/1_noext.xmp"
    assert xmp_path("P/1_IMG.JPG", "append") == "P/1_IMG.JPG.xmp"


def test_the_xmp_holds_the_parsed_record_as_the_database_does(tmp_path: Path) -> None:
    raw = {"id": "123", "image_category_id": True, "gps_lat": "47.5", "gps_long": "-122.25"}
    photo = Photo.from_api({**raw, "taken_at": "2024-05-01T10:00:00", "description": "a\rb"})
    path = tmp_path / "p.jpg.xmp"
    path.write_bytes(
        xmp_bytes(photo, project_id=5, project_name="Tower", link="https://app.procore.com/5/project/photos")
    )
    tags = exiftool(path)
    assert tags["XMP-pps:PhotoId"] == 123 and "XMP-pps:AlbumId" not in tags
    assert (tags["XMP-exif:GPSLatitude"], tags["XMP-exif:GPSLongitude"]) == (47.5, -122.25)
    assert tags["XMP-exif:DateTimeOriginal"] == "2024:05:01 10:00:00Z", "a time without a zone is UTC"
    (li,) = ElementTree.parse(path).getroot().iter("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li")
    assert li.text == "a\rb", "a carriage return survives any XML parser"


async def test_a_new_file_whose_extension_changed_keeps_its_lightroom_xmp(
    make_sim: Any, settings_for: Any
) -> None:
    sim = await make_sim(photos=2, projects=1)
    settings = settings_with_xmp(settings_for, sim, "replace")
    assert (await sync(settings)).exit_code == ExitCode.OK
    changed = min(sim.company.photos)
    sim.replace_photo(changed)
    sim.edit_photo(changed, filename="IMG_1.png")  # IMG_1.jpg and IMG_1.png share IMG_1.xmp
    assert (await sync(settings)).exit_code == ExitCode.OK
    (photo,) = [p for p, d in photos_with_sidecars(settings.mirror.root) if d["procore"]["id"] == changed]
    assert photo.name.endswith("IMG_1.png")
    assert exiftool(photo.with_suffix(".xmp"))["XMP-pps:PhotoId"] == changed
