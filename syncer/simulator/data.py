"""A generated Procore company: projects, albums and photos with realistic metadata, from a seed.

Timestamps are fixed by the seed (never "now"), so two simulators with one seed serve the same
company, and a rerun of the demo finds nothing new. Some photos share an `updated_at` second, as
after a bulk move in Procore; some have no `taken_at`, odd file names or no album.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from syncer.simulator.jpeg import SCENES, PhotoContent

EPOCH = datetime(2026, 6, 1, tzinfo=UTC)
"""The generated company's "present": every generated timestamp is before it."""
FIRST_ID = 562_950_208_716_653  # Procore ids exceed 32 bits

PROJECTS = [
    "Riverside Medical Center",
    "Harbor View Apartments – Phase 2",  # noqa: RUF001 - real names have dashes
    "Northgate Logistics Hub",
    "Lincoln Elementary Modernization",
    "Cedar Ridge Water Treatment Plant",
    "Downtown Transit Center",
    "Oakwood Senior Living",
    "Bayfront Hotel Renovation",
]
ALBUMS = [
    "Site Progress",
    "Safety Walks",
    "Concrete Pours",
    "MEP Rough-In",
    "Punch List",
    "Drone Surveys",
    "Deliveries",
    "Inspections",
    "Daily Log",
    "Weather Delays",
]
PEOPLE = [
    "Jordan Smith",
    "Maria Garcia",
    "Wei Chen",
    "Aisha Okafor",
    "Liam O'Brien",
    "Priya Raman",
    "Tomás Herrera",
    "Hannah Müller",
]
TRADES = [
    "Concrete",
    "Electrical",
    "Plumbing",
    "HVAC",
    "Framing",
    "Drywall",
    "Roofing",
    "Site Work",
    "Steel Erection",
    "Glazing",
]
PLACES = ["Building A", "Building B", "Parking Structure", "Site"]
LEVELS = ["Level 1", "Level 2", "Level 3", "Roof", "Basement"]
SUBJECTS = [
    "North elevation after framing inspection",
    "Rebar placement at grid C-4",
    "Slab pour, east half",
    "Conduit run above corridor ceiling",
    "Waterproofing at footing",
    "Curtain wall mockup",
    "Crane pick of rooftop unit",
    "Trench shoring check",
    "Damaged drywall, for back-charge",
    "Fire stopping at penetrations",
    "",
]


@dataclass
class SimAlbum:
    id: int
    project_id: int
    name: str
    private: bool
    position: int


@dataclass
class SimProject:
    id: int
    name: str
    active: bool = True


@dataclass
class SimPhoto:
    id: int
    project_id: int
    album_id: int | None
    filename: str
    description: str
    taken_at: datetime | None
    created_at: datetime | None
    """None for a record Procore keeps without one: no created_at range ever matches it."""
    updated_at: datetime
    uploader: dict[str, Any]
    location: dict[str, Any] | None
    trades: list[dict[str, Any]]
    private: bool
    starred: bool
    projection: str
    daily_log_segment_id: int | None
    log_date: date | None
    gps: tuple[float, float] | None
    variant: int
    requested_size: int
    version: int = 1
    deleted: bool = False
    _content: PhotoContent | None = field(default=None, repr=False, compare=False)

    @property
    def content(self) -> PhotoContent:
        """This version's bytes; rebuilt when `version` changes (a replaced file)."""
        tag = f"procore-sim photo {self.id} version {self.version}".encode()
        if self._content is None or self._content.tag != tag:
            small = self.requested_size < 20_000
            self._content = PhotoContent(self.variant, tag, self.requested_size, small=small)
        return self._content

    @property
    def file_key(self) -> str:
        return f"{self.id:x}v{self.version}"


@dataclass
class Company:
    id: int
    name: str
    projects: dict[int, SimProject]
    albums: dict[int, SimAlbum]
    photos: dict[int, SimPhoto]
    locations: dict[int, dict[str, Any]]

    def live_photos(self, project_id: int) -> list[SimPhoto]:
        return [p for p in self.photos.values() if p.project_id == project_id and not p.deleted]


def _filename(rng: random.Random, when: datetime) -> str:
    style = rng.random()
    if style < 0.35:
        return f"IMG_{rng.randint(1000, 9999)}.JPG"
    if style < 0.55:
        return f"PXL_{when:%Y%m%d_%H%M%S}{rng.randint(100, 999)}.jpg"
    if style < 0.7:
        return f"DSC{rng.randint(10000, 99999):05d}.jpg"
    if style < 0.85:
        return f"{when:%Y%m%d_%H%M%S}.jpg"
    if style < 0.95:
        return rng.choice(["photo.jpg", "image.jpeg", "Site photo.JPG"])  # shared names
    return f"{rng.choice(SUBJECTS) or 'Untitled'}.jpg"


def generate_company(
    seed: int = 1,
    *,
    projects: int = 3,
    photos: int = 500,
    albums_per_project: int = 4,
    photo_size: int | None = None,
    company_id: int = 4_821,
) -> Company:
    """A company whose photos are spread unevenly over `projects`; sizes vary unless fixed."""
    rng = random.Random(seed)
    next_id = FIRST_ID + rng.randint(0, 10_000)

    def new_id() -> int:
        nonlocal next_id
        next_id += rng.randint(1, 40)
        return next_id

    company = Company(
        id=company_id, name="Sample Builders Inc.", projects={}, albums={}, photos={}, locations={}
    )
    people = [{"id": new_id(), "login": f"{n.split()[0].lower()}@builder.example", "name": n} for n in PEOPLE]
    trades = [{"id": new_id(), "name": t, "active": True} for t in TRADES]
    for place in PLACES:
        parent = new_id()
        company.locations[parent] = {
            "id": parent,
            "name": place,
            "node_name": place,
            "parent_id": None,
        }
        for level in LEVELS:
            loc = new_id()
            name = f"{place} > {level}"
            company.locations[loc] = {
                "id": loc,
                "name": name,
                "node_name": name,
                "parent_id": parent,
            }
    location_ids = list(company.locations)

    weights = [rng.uniform(0.5, 2.0) for _ in range(projects)]
    for i in range(projects):
        pid = new_id()
        company.projects[pid] = SimProject(
            id=pid,
            name=PROJECTS[i % len(PROJECTS)] + (f" {i // len(PROJECTS) + 1}" if i >= len(PROJECTS) else ""),
        )
        for position, name in enumerate(rng.sample(ALBUMS, k=min(albums_per_project, len(ALBUMS)))):
            aid = new_id()
            company.albums[aid] = SimAlbum(aid, pid, name, private=rng.random() < 0.1, position=position)

    project_ids = list(company.projects)
    for _ in range(photos):
        pid = rng.choices(project_ids, weights=weights)[0]
        albums = [a.id for a in company.albums.values() if a.project_id == pid]
        created = EPOCH - timedelta(seconds=rng.randint(3600, 365 * 86400))
        taken = None if rng.random() < 0.05 else created - timedelta(seconds=rng.randint(0, 3 * 86400))
        updated = created if rng.random() < 0.7 else created + timedelta(seconds=rng.randint(60, 30 * 86400))
        updated = min(updated, EPOCH - timedelta(seconds=60))
        pix = new_id()
        company.photos[pix] = SimPhoto(
            id=pix,
            project_id=pid,
            album_id=None if rng.random() < 0.03 else rng.choice(albums),
            filename=_filename(rng, taken or created),
            description=rng.choice(SUBJECTS),
            taken_at=taken,
            created_at=created,
            updated_at=updated,
            uploader=rng.choice(people),
            location=company.locations[rng.choice(location_ids)] if rng.random() < 0.7 else None,
            trades=rng.sample(trades, k=rng.choice([0, 1, 1, 2])),
            private=rng.random() < 0.05,
            starred=rng.random() < 0.1,
            projection="360" if rng.random() < 0.02 else "regular",
            daily_log_segment_id=new_id() if rng.random() < 0.2 else None,
            log_date=(taken or created).date() if rng.random() < 0.3 else None,
            gps=(round(rng.uniform(25, 48), 6), round(rng.uniform(-122, -71), 6))
            if rng.random() < 0.5
            else None,
            variant=rng.randrange(SCENES),
            requested_size=photo_size if photo_size is not None else int(rng.lognormvariate(11.3, 0.5)),
        )
    # A bulk move: a tenth of each project's photos share one updated_at second.
    for pid in project_ids:
        live = company.live_photos(pid)
        moved = rng.sample(live, k=len(live) // 10)
        when = EPOCH - timedelta(seconds=rng.randint(3600, 30 * 86400))
        for photo in moved:
            photo.updated_at = max(when, photo.created_at or when)
    return company
