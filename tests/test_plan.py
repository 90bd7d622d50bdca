"""`plan.decide`: what a listed photo means for the mirror, given what the database holds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from syncer.plan import Change, decide
from syncer.procore.models import Photo
from syncer.store import StoredPhoto

EARLIER = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
LATER = EARLIER + timedelta(hours=1)


def listed(*, key: str = "k1", size: int = 1000, updated: datetime = LATER) -> Photo:
    return Photo.from_api(
        {
            "id": 7,
            "url": f"https://storage.procore.com/files/{key}/IMG_7.jpg?sig=x",
            "size": size,
            "filename": "IMG_7.jpg",
            "updated_at": updated.isoformat(),
        }
    )


def stored(photo: Photo, *, path: str = "a/7.jpg", updated: datetime = LATER) -> StoredPhoto:
    return StoredPhoto(
        id=photo.id,
        project_id=1,
        file_key=photo.file_key,
        rel_path=path,
        updated_at=updated,
        local_path=path,
        local_file_key=photo.file_key,
        local_size=photo.size,
        sha256="0" * 64,
        sidecar_of=updated,
        deleted_at=None,
        trashed_path=None,
    )


def test_an_older_copy_of_a_stored_record_is_stale_and_ignored() -> None:
    newer = listed(updated=LATER)
    older = listed(updated=EARLIER, key="k0")  # a repeat from a shifted page, before an edit
    assert decide(older, stored(newer), "a/7.jpg").change is Change.STALE


def test_a_file_replaced_by_one_of_the_same_size_is_downloaded_again() -> None:
    before = listed(key="k1", size=1000, updated=EARLIER)
    after = listed(key="k2", size=1000, updated=LATER)  # new bytes, a new storage key, same length
    assert decide(after, stored(before, updated=EARLIER), "a/7.jpg").change is Change.REPLACED


def test_a_moved_url_with_the_same_size_and_updated_at_keeps_the_file() -> None:
    before, after = listed(key="v4-prostore-7"), listed(key="v5-01HZX")
    decision = decide(after, stored(before), "a/7.jpg")
    assert not decision.download and decision.url_moved
    assert decision.change is Change.METADATA, "the sidecar is rewritten with the new URL"


def test_a_moved_url_and_a_new_layout_path_renames_the_file() -> None:
    decision = decide(listed(key="v5-01HZX"), stored(listed(key="v4"), path="a/old.jpg"), "a/7.jpg")
    assert decision.change is Change.MOVED and decision.url_moved


def test_a_moved_url_with_a_moved_updated_at_is_downloaded() -> None:
    before, after = listed(key="v4", updated=EARLIER), listed(key="v5", updated=LATER)
    assert decide(after, stored(before, updated=EARLIER), "a/7.jpg").change is Change.REPLACED


def test_a_moved_url_with_another_size_is_downloaded() -> None:
    before, after = listed(key="v4", size=1000), listed(key="v5", size=1001)
    assert decide(after, stored(before), "a/7.jpg").change is Change.REPLACED


def test_a_moved_url_while_a_replacement_waits_is_downloaded() -> None:
    """The mirror still holds the file before a replacement it failed to fetch: a later listing
    with the same `updated_at` is the replacement, not the old file at a new address."""
    old, replacement = listed(key="k1"), listed(key="k2")
    waiting = replace(stored(old), file_key=replacement.file_key)
    assert decide(listed(key="k3"), waiting, "a/7.jpg").change is Change.REPLACED


def test_the_same_record_at_its_recorded_url_is_not_a_moved_url() -> None:
    photo = listed()
    assert not decide(photo, stored(photo), "a/7.jpg").url_moved


def test_a_rename_that_keeps_the_file_is_not_a_download() -> None:
    photo = listed()
    assert decide(photo, stored(photo, path="a/old.jpg"), "a/7.jpg").change is Change.MOVED


def test_the_same_record_again_changes_nothing() -> None:
    photo = listed()
    assert decide(photo, stored(photo), "a/7.jpg").change is Change.UNCHANGED


def test_a_photo_listed_before_but_never_downloaded_is_new_not_replaced() -> None:
    photo = listed()
    never = replace(stored(photo), local_path=None, local_file_key=None, local_size=None, sha256=None)
    decision = decide(photo, never, "a/7.jpg")
    assert decision.change is Change.NEW and decision.download


def test_a_photo_never_seen_is_new_and_downloaded() -> None:
    decision = decide(listed(), None, "a/7.jpg")
    assert decision.change is Change.NEW and decision.download and decision.stored is None


def test_an_edit_of_the_metadata_alone_rewrites_the_sidecar() -> None:
    photo = listed(updated=LATER)
    decision = decide(photo, stored(photo, updated=EARLIER), "a/7.jpg")
    assert decision.change is Change.METADATA and decision.relocate and not decision.download


def test_a_decision_carries_the_photo_its_path_and_what_was_stored() -> None:
    photo = listed()
    new = decide(photo, None, "a/7.jpg")
    assert (new.photo, new.rel_path, new.stored) == (photo, "a/7.jpg", None)
    row = stored(photo, path="a/old.jpg")
    moved = decide(photo, row, "a/7.jpg")
    assert (moved.photo, moved.rel_path, moved.stored) == (photo, "a/7.jpg", row)


def test_a_photo_back_from_the_trash_is_restored_not_downloaded() -> None:
    photo = listed()
    trashed = replace(stored(photo), local_path=None, trashed_path=".trash/a/7.jpg")
    decision = decide(photo, trashed, "a/7.jpg")
    assert decision.change is Change.RESTORED and decision.relocate and not decision.download
