"""The gallery in a real browser: headless Chromium opens it from file://, as a person would open
a USB copy of the mirror, with no server and no network. (Debian's chromium and chromium-driver;
`.ci/run` installs them, and CI fails rather than skips without them.)"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from syncer.errors import ExitCode
from syncer.gallery import GALLERY_DIR
from syncer.gallery.pages import newest_first, project_data, project_page
from syncer.simulator import Simulator
from syncer.store import ArchivedPhoto
from tests.conftest import write_config
from tests.test_cli import syncer

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DECOMPOSED = "Cafe\u0301 counter, \u202egpj.exe backsplash"
"""An accent stored decomposed (NFD), and a right-to-left override."""
PLANTED = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script> rebar"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(
                f"{', '.join(missing)} missing: .ci/run installs Debian's chromium and chromium-driver"
            )
        pytest.skip(
            f"no browser to test in: install Debian's chromium and chromium-driver ({', '.join(missing)})"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


async def synced_gallery(make_sim: Any, tmp_path: Path) -> tuple[Simulator, Path]:
    sim = await make_sim(photos=40, projects=2)
    first = min(sim.company.projects)
    sim.company.projects[first].name = "<b id=planted>Tower</b> & Annex"
    sim.edit_photo(
        min(p.id for p in sim.company.photos.values() if p.project_id == first), description=PLANTED
    )
    decomposed = max(p.id for p in sim.company.photos.values() if p.project_id == first)
    sim.edit_photo(decomposed, description=DECOMPOSED)
    config = str(write_config(sim, tmp_path))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    run = await syncer("gallery", "--config", config)
    assert run.code == ExitCode.OK, run.err
    return sim, tmp_path / "mirror"


def open_page(browser: WebDriver, url: str) -> None:
    browser.get(url)
    WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.readyState") == "complete")


def open_project(browser: WebDriver, root: Path, project_id: int) -> None:
    open_page(browser, (root / GALLERY_DIR / f"project-{project_id}.html").as_uri())
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
    )


def shown(browser: WebDriver) -> str:
    return str(browser.find_element(By.ID, "count").text)


def settle(browser: WebDriver) -> None:
    """Let a debounced search and the next frame run."""
    time.sleep(0.4)
    browser.execute_script("return new Promise(r => requestAnimationFrame(() => r()))")


def open_photo(browser: WebDriver, root: Path, project_id: int, search: str, photo_id: int) -> Any:
    """Open a project's page, search for `search`, click the photo's tile; its open viewer."""
    open_project(browser, root, project_id)
    browser.find_element(By.ID, "search").send_keys(search)
    settle(browser)
    browser.find_element(By.CSS_SELECTOR, f'a.tile[href="#photo={photo_id}"]').click()
    viewer = browser.find_element(By.ID, "viewer")
    WebDriverWait(browser, 10).until(lambda b: viewer.is_displayed())
    return viewer


def errors_in_console(browser: WebDriver) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def project_photos(sim: Simulator, project_id: int) -> list[Any]:
    return [p for p in sim.company.photos.values() if p.project_id == project_id]


async def test_the_index_lists_every_project_with_its_count(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    open_page(browser, (root / "index.html").as_uri())
    cards = browser.find_elements(By.CSS_SELECTOR, "#projects .card")
    assert len(cards) == len(sim.company.projects)
    texts = "\n".join(c.text for c in cards)
    for project in sim.company.projects.values():
        count = len(project_photos(sim, project.id))
        assert f"{project.name}\n{count} photos" in texts
    assert browser.find_elements(By.ID, "planted") == [], "a project's name was read as markup"
    assert errors_in_console(browser) == []


async def test_a_project_page_opens_from_file_and_counts_its_photos(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    open_page(browser, (root / "index.html").as_uri())
    project = max(sim.company.projects)
    browser.find_element(By.CSS_SELECTOR, f'a[href=".gallery/project-{project}.html"]').click()
    WebDriverWait(browser, 20).until(
        lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready")
    )
    assert shown(browser) == f"{len(project_photos(sim, project))} photos"
    thumbs = browser.find_elements(By.CSS_SELECTOR, ".tile img")
    assert thumbs and all(b for b in (t.get_attribute("naturalWidth") for t in thumbs[:5])), "thumbnails load"
    assert errors_in_console(browser) == []


async def test_the_search_finds_words_in_description_location_trade_uploader_and_file_name(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    photos = project_photos(sim, project)
    with_location = next(p for p in photos if p.location)
    word = with_location.location["node_name"].split(" > ")[-1]

    def haystack(p: Any) -> str:
        parts = [p.description, p.location["node_name"] if p.location else "", p.uploader["name"], p.filename]
        return " ".join([*parts, *(t["name"] for t in p.trades)]).lower()

    expected = sum(all(w in haystack(p) for w in word.lower().split()) for p in photos)
    open_project(browser, root, project)
    browser.find_element(By.ID, "search").send_keys(word)
    settle(browser)
    assert shown(browser) == f"{expected} of {len(photos)} photos"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tile")) == expected


async def test_photos_without_an_album_are_grouped_under_the_name_of_their_folder(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim = await make_sim(photos=8, projects=1)
    loose = sim.edit_photo(min(sim.company.photos), album_id=None)
    config = str(write_config(sim, tmp_path, gallery={"enabled": True}))
    assert (await syncer("sync", "--config", config)).code == ExitCode.OK
    root = tmp_path / "mirror"
    folder = next(root.rglob(f"{loose.id}_*")).relative_to(root).parts[1]  # {project}/{album}/...
    open_project(browser, root, loose.project_id)
    groups = [h.text for h in browser.find_elements(By.CSS_SELECTOR, ".group h2")]
    assert folder in groups, groups
    photo = open_photo(browser, root, loose.project_id, loose.filename, loose.id)
    assert f"Album\n{folder}\n" in photo.text


async def test_the_album_and_starred_filters_narrow_the_photos(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    photos = project_photos(sim, project)
    album = sim.company.albums[photos[0].album_id]
    in_album = [p for p in photos if p.album_id == album.id]
    open_project(browser, root, project)
    Select(browser.find_element(By.ID, "album")).select_by_visible_text(f"{album.name} ({len(in_album)})")
    settle(browser)
    assert shown(browser) == f"{len(in_album)} of {len(photos)} photos"
    browser.find_element(By.ID, "starred").click()
    settle(browser)
    starred = sum(p.starred for p in in_album)
    assert shown(browser) == f"{starred} of {len(photos)} photos"


async def test_the_date_filter_keeps_the_photos_of_those_days(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    photos = project_photos(sim, project)
    days = sorted((p.taken_at or p.created_at).astimezone(UTC).date() for p in photos)
    start, end = days[len(days) // 4], days[len(days) // 2]
    expected = sum(start <= d <= end for d in days)
    open_project(browser, root, project)
    browser.execute_script(
        "for (const [id, v] of [['from', arguments[0]], ['to', arguments[1]]]) {"
        " const el = document.getElementById(id); el.value = v; el.dispatchEvent(new Event('change')); }",
        start.isoformat(),
        end.isoformat(),
    )
    settle(browser)
    assert shown(browser) == f"{expected} of {len(photos)} photos"


async def test_a_photo_opens_with_its_metadata_and_its_original_file(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    photo = next(p for p in project_photos(sim, project) if p.trades and p.location)
    viewer = open_photo(browser, root, project, photo.filename, photo.id)
    facts = dict(
        zip(
            (e.text for e in viewer.find_elements(By.TAG_NAME, "dt")),
            (e.text for e in viewer.find_elements(By.TAG_NAME, "dd")),
            strict=True,
        )
    )
    assert facts["Description"] == photo.description
    assert facts["Location"] == photo.location["node_name"]
    assert facts["Trades"] == ", ".join(t["name"] for t in photo.trades)
    assert facts["Uploaded by"] == photo.uploader["name"]
    assert facts["Procore id"] == str(photo.id)
    original = viewer.find_element(By.LINK_TEXT, "Open the original file").get_attribute("href")
    path = Path(unquote(urlparse(original).path))
    assert hashlib.sha256(path.read_bytes()).hexdigest() == facts["SHA-256"]
    assert path.read_bytes() == photo.content.all_bytes()
    procore = viewer.find_element(By.PARTIAL_LINK_TEXT, "in Procore").get_attribute("href")
    assert procore == f"https://app.procore.com/{project}/project/photos"
    assert viewer.find_element(By.CSS_SELECTOR, "figure img").get_attribute("naturalWidth") != "0"
    browser.find_element(By.TAG_NAME, "body").send_keys("\ue00c")  # Escape
    WebDriverWait(browser, 10).until(lambda b: not viewer.is_displayed())


async def test_a_script_planted_in_a_description_shows_as_text_and_does_not_run(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = min(sim.company.projects)
    planted = next(p for p in project_photos(sim, project) if p.description == PLANTED)
    viewer = open_photo(browser, root, project, "onerror", planted.id)
    assert PLANTED in viewer.text
    assert browser.find_elements(By.CSS_SELECTOR, 'img[src="x"]') == []
    assert browser.find_elements(By.ID, "planted") == []
    assert browser.title != "pwned" and "Tower" in browser.title


start_of_time = datetime(1970, 1, 1, tzinfo=UTC)
SCROLL_THROUGH = """
const grid = arguments[0], frame = () => new Promise(r => requestAnimationFrame(r));
let slowest = 0;
for (let step = 1; step <= 30; step++) {
  const started = performance.now();
  grid.scrollTop = grid.scrollHeight * step / 31;
  await frame(); await frame();
  slowest = Math.max(slowest, performance.now() - started);
}
return slowest;
"""
"""Scroll through the whole grid in 30 jumps; the slowest jump's time until two frames were drawn."""


def synthetic(count: int) -> list[ArchivedPhoto]:
    """`count` photos of one project spread over albums, days, people and places."""
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return [
        ArchivedPhoto(
            id=1_000_000 + i,
            project_id=7,
            project_name="Big Project",
            album_name=f"Album {i % 40}",
            local_path=f"Big Project/Album {i % 40}/{1_000_000 + i}_IMG_{i:06d}.JPG",
            filename=f"IMG_{i:06d}.JPG",
            taken_at=start + timedelta(minutes=37 * i),
            created_at=start + timedelta(minutes=37 * i, hours=2),
            uploader_name=f"Person {i % 60}",
            location_name=f"Building {i % 5} > Level {i % 12}",
            description=f"Photo {i} of the works: conduit, slab and framing, grid line {i % 90}",
            starred=i % 17 == 0,
            private=False,
            size=3_000_000 + i,
            sha256=hashlib.sha256(str(i).encode()).hexdigest(),
            deleted_at=None,
            trades=("Electrical", "Concrete") if i % 3 else ("Framing",),
            width=4000,
            height=3000,
            gps_lat=None,
            gps_long=None,
        )
        for i in range(count)
    ]


def test_a_project_of_100000_photos_opens_in_seconds_and_draws_only_what_is_in_view(
    browser: WebDriver, tmp_path: Path
) -> None:
    folder = tmp_path / GALLERY_DIR
    (folder / "data").mkdir(parents=True)
    photos = synthetic(100_000)
    (folder / "data" / "project-7.js").write_bytes(
        project_data(7, "Big Project", "https://app.procore.com/7", newest_first(photos), set())
    )
    (folder / "project-7.html").write_bytes(project_page(7, "Big Project"))
    assets = Path(__file__).parents[1] / "syncer" / "gallery" / "assets"
    for asset in assets.iterdir():
        shutil.copy(asset, folder / asset.name)
    started = time.monotonic()
    open_project(browser, tmp_path, 7)
    took = time.monotonic() - started
    assert shown(browser) == "100,000 photos"
    assert took < 8, f"the page took {took:.1f} s to show 100,000 photos"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tile")) < 400, "tiles out of view were drawn"
    grid = browser.find_element(By.ID, "grid")
    slowest = browser.execute_script(SCROLL_THROUGH, grid)
    assert slowest < 200, f"a jump while scrolling took {slowest:.0f} ms"
    browser.execute_script("arguments[0].scrollTop = arguments[0].scrollHeight", grid)
    settle(browser)
    last_album = [p for p in photos if p.album_name == "Album 39"]  # albums sort by name, numbers as numbers
    oldest = min(last_album, key=lambda p: p.taken_at or start_of_time)
    assert browser.find_elements(By.CSS_SELECTOR, f'a.tile[href="#photo={oldest.id}"]')
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tile")) < 400
    browser.find_element(By.ID, "search").send_keys("Level 7 grid line 42")
    settle(browser)
    words = ["level", "7", "grid", "line", "42"]
    expected = sum(all(w in searchable(p) for w in words) for p in photos)
    assert 0 < expected < 100_000
    assert shown(browser) == f"{expected:,} of 100,000 photos"


def searchable(p: ArchivedPhoto) -> str:
    """What the page's search looks in: description, location, trades, uploader, file name."""
    parts = [
        p.description or "",
        p.location_name or "",
        " ".join(p.trades),
        p.uploader_name or "",
        p.filename or "",
    ]
    return "\n".join(parts).lower()


async def test_a_search_typed_composed_finds_text_stored_decomposed(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = min(sim.company.projects)
    photo = next(p for p in project_photos(sim, project) if p.description == DECOMPOSED)
    viewer = open_photo(browser, root, project, "caf\u00e9", photo.id)
    shown_text = viewer.find_elements(By.TAG_NAME, "dd")[1].text
    assert "\u202e" not in shown_text and "gpj.exe backsplash" in shown_text


async def test_closing_a_photo_then_going_back_does_not_open_it_again(
    browser: WebDriver, make_sim: Any, tmp_path: Path
) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    photo = project_photos(sim, project)[0]
    viewer = open_photo(browser, root, project, photo.filename, photo.id)
    assert browser.execute_script("return document.activeElement.closest('#viewer') !== null")
    assert browser.execute_script("return document.getElementById('grid').inert")
    browser.find_element(By.TAG_NAME, "body").send_keys("\ue00c")  # Escape
    WebDriverWait(browser, 10).until(lambda b: not viewer.is_displayed())
    assert "#photo" not in browser.current_url
    browser.back()  # leaves the project's page: the photo was a step, and closing took it back
    assert not browser.current_url.endswith(f"#photo={photo.id}")


async def test_a_resize_keeps_the_photos_in_view(browser: WebDriver, make_sim: Any, tmp_path: Path) -> None:
    sim, root = await synced_gallery(make_sim, tmp_path)
    project = max(sim.company.projects)
    open_project(browser, root, project)
    grid = browser.find_element(By.ID, "grid")
    browser.execute_script("arguments[0].scrollTop = arguments[0].scrollHeight / 2", grid)
    settle(browser)
    first = browser.execute_script(FIRST_TILE_IN_VIEW, grid)
    browser.set_window_size(900, 900)
    try:
        settle(browser)
        shown_after = browser.execute_script(TILES_IN_VIEW, grid)
        assert first in shown_after
    finally:
        browser.set_window_size(1280, 900)


FIRST_TILE_IN_VIEW = """
const grid = arguments[0], top = grid.getBoundingClientRect().top;
const tiles = [...grid.querySelectorAll('a.tile')].filter(t => t.getBoundingClientRect().top >= top);
tiles.sort((a, b) => a.getBoundingClientRect().top - b.getBoundingClientRect().top
  || a.getBoundingClientRect().left - b.getBoundingClientRect().left);
return tiles[0].getAttribute('href');
"""
TILES_IN_VIEW = """
const grid = arguments[0], box = grid.getBoundingClientRect();
return [...grid.querySelectorAll('a.tile')]
  .filter(t => {
    const r = t.getBoundingClientRect();
    return r.top >= box.top - 1 && r.bottom <= box.bottom + 1;
  })
  .map(t => t.getAttribute('href'));
"""
