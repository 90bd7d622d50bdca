"""The exact wire form of every `GET /rest/v1.0/images` parameter."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from syncer.procore.query import ImageFilters, ImageQuery, Range, encode_query


def wire(query: ImageQuery, **kw: int) -> str:
    return encode_query(query.params(**kw))


def test_project_id_alone() -> None:
    assert wire(ImageQuery(project_id=562950208716653)) == "project_id=562950208716653"


def test_album_page_and_per_page() -> None:
    query = ImageQuery(project_id=1, image_category_id=45)
    assert wire(query, page=2, per_page=500) == "project_id=1&image_category_id=45&page=2&per_page=500"


def test_array_filters_use_rails_brackets() -> None:
    filters = ImageFilters(
        daily_log_segment_id=[1, 2], trade_ids=[7], uploader_id=[3], id=[9, 10], location_id=[5]
    )
    assert wire(ImageQuery(project_id=1, filters=filters)) == (
        "project_id=1&filters[daily_log_segment_id][]=1&filters[daily_log_segment_id][]=2"
        "&filters[location_id][]=5&filters[trade_ids][]=7&filters[uploader_id][]=3"
        "&filters[id][]=9&filters[id][]=10"
    )


def test_boolean_filters_are_lowercase_words() -> None:
    filters = ImageFilters(private=False, starred=True, include_sublocations=True)
    assert wire(ImageQuery(project_id=1, filters=filters)) == (
        "project_id=1&filters[private]=false&filters[starred]=true&filters[include_sublocations]=true"
    )


def test_date_range_and_single_date_for_log_date() -> None:
    ranged = ImageFilters(log_date=Range(date(2026, 5, 1), date(2026, 5, 31)))
    assert (
        wire(ImageQuery(project_id=1, filters=ranged))
        == "project_id=1&filters[log_date]=2026-05-01...2026-05-31"
    )
    single = ImageFilters(log_date="2026-05-06")
    assert wire(ImageQuery(project_id=1, filters=single)) == "project_id=1&filters[log_date]=2026-05-06"


def test_time_ranges_are_second_precision_utc() -> None:
    start = datetime(2026, 5, 6, 7, 5, 19, 999, tzinfo=UTC)
    end = datetime(2026, 5, 6, 9, 0, 0, tzinfo=timezone(timedelta(hours=2)))  # 07:00Z
    filters = ImageFilters(updated_at=Range(start, end), created_at=Range(date(2026, 1, 1), start))
    assert wire(ImageQuery(project_id=1, filters=filters)) == (
        "project_id=1&filters[created_at]=2026-01-01...2026-05-06T07:05:19Z"
        "&filters[updated_at]=2026-05-06T07:05:19Z...2026-05-06T07:00:00Z"
    )


def test_offsets_written_in_config_keep_their_plus_sign() -> None:
    filters = ImageFilters(created_at="2026-05-06T07:05:19+02:00...2026-05-07")
    assert wire(ImageQuery(project_id=1, filters=filters)) == (
        "project_id=1&filters[created_at]=2026-05-06T07:05:19%2B02:00...2026-05-07"
    )


def test_projection_query_sort_and_view() -> None:
    query = ImageQuery(
        project_id=1,
        filters=ImageFilters(projection="360", query="slab pour & rebar"),
        sort="-created_at",
        serializer_view="ids_only",
    )
    assert wire(query) == (
        "project_id=1&filters[projection]=360&filters[query]=slab%20pour%20%26%20rebar"
        "&sort=-created_at&serializer_view=ids_only"
    )


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Range(datetime(2026, 1, 1), datetime(2026, 1, 2)).wire()
