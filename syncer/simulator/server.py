"""The simulator's origins: the Procore API (with OAuth), Procore's storage host (the file URLs),
and an object store.

Tests reach into a running `Simulator` to change its data (`edit_photo`, `delete_photo`, ...), to
register `listing_hooks` that run between page requests, and to read `stats`.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import html
import json
import math
import random
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiohttp import web
from multidict import MultiMapping
from yarl import URL

from syncer.simulator.data import Company, SimPhoto, generate_company
from syncer.simulator.limits import RateLimits
from syncer.simulator.signin import SignIn, client_credentials

SORTS = {"created_at", "taken_at", "deleted_at", "exposure_date", "most_recent"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FILE_PATHS = {
    "v5": "/api/v5/files/us-east-1/pro-core.com/companies/{company}/{name}",
    "v4": "/v4/d/us-east-1/pro-core.com/prostore/{name}",
}
"""The shapes of Procore's file URLs seen in public traffic (v4 is the older); neither holds the
photo's file name, and the name in it is opaque (a ULID in v5)."""
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass(frozen=True)
class Hosts:
    """The host names in the URLs the simulator hands out. It listens on loopback whatever they
    say: names other than these defaults must resolve to 127.0.0.1 for the client (a test gives
    its `syncer` process its own hosts file).

    By default the storage host is the API's host on a port of its own, and the object store is
    another host (`localhost`), as S3 is not Procore: the token may go to the one, never the other."""

    api: str = "127.0.0.1"
    login: str = "127.0.0.1"
    """The OAuth host; served by the API's port."""
    storage: str = "127.0.0.1"
    store: str = "localhost"


@dataclass
class SimConfig:
    seed: int = 1
    projects: int = 3
    photos: int = 500
    albums_per_project: int = 4
    photo_size: int | None = None
    company_id: int = 4_821
    client_id: str = "sim-client-id"
    client_secret: str = "sim-client-secret"  # noqa: S105 - the simulator's own test credential
    token_ttl: float = 5400.0
    url_ttl: float = 600.0
    """Lifetime of signed file URLs, on the storage host and at the object store."""
    max_per_page: int = 100
    """The most items a page holds, whatever `per_page` asks: Procore documents no maximum for
    images, so tests try both a server that caps at 100 and one that gives 1,000."""
    per_page_header: bool = True
    """False: pages are capped at `max_per_page` without a `Per-Page` header saying so."""
    hourly_limit: int = 100_000
    hourly_window: float = 3600.0
    """Seconds of the "hourly" window: shorter in tests, so that window can run out first."""
    spike_limit: int = 2_000
    spike_window: float = 10.0
    count_file_requests: bool = True
    """Whether the storage host's requests (the first hop of a photo download) count against the
    rate limit (unknown for Procore)."""
    error_rate: float = 0.0
    """Share of answers (API, storage host and object store) replaced by a 500, 502 or 503."""
    store_error_rate: float = 0.0
    """Share of object-store answers (only) replaced by a 503 SlowDown."""
    cut_rate: float = 0.0
    """Share of object-store bodies cut short after about half of the bytes."""
    broken_json_rate: float = 0.0
    """Share of API answers whose JSON is truncated or replaced by an HTML page."""
    latency: float = 0.0
    store_latency: float = 0.0
    bandwidth: float | None = None
    """Bytes per second for each object-store answer; None is unlimited."""
    range_support: bool = True
    retry_after: float = 1.0
    tied: int = 0
    """Photos of the first project that share one second of both `created_at` and `updated_at`
    (a bulk import): more than a page of them can only be listed by the order Procore picks anew
    on every request."""
    hidden: set[int] = field(default_factory=set)
    """Photo ids counted in every listing's `Total` but never served on a page: a listing that
    holds them can never be proven complete."""
    broken_files: set[int] = field(default_factory=set)
    """Photo ids whose file URL on the storage host always answers 500."""
    broken_file_text: str = "internal error"
    """What the error page of a broken file says: an upstream page can say anything."""
    redirect_hops: int = 1
    """Redirects from a photo's file URL to the object store: the extra ones go through `/hop/...`
    on the storage host first (relative `Location`s, 301, 307, 308 in turn)."""
    chunked_bodies: bool = False
    """Object-store bodies come without a `Content-Length` (chunked), as some servers send them."""
    token_faults: bool = True
    """`error_rate` reaches the token endpoint too, as any server can fail."""
    sub_second: bool = True
    """Times are stored with fractions of a second, as Procore stores them, and shown in whole
    seconds: a photo shown at 12:00:07 may be stored at 12:00:07.6, past a range that ends at
    12:00:07. A quarter of the stored times fall exactly on the second, so both kinds meet every
    boundary."""
    range_end: Literal["inclusive", "exclusive"] = "inclusive"
    """Whether a `created_at` or `updated_at` range holds its end (unknown for Procore)."""
    tls: ssl.SSLContext | None = None
    """Serve every origin over HTTPS with this server context (a test CA's certificate for the
    names in `hosts`)."""
    store_tls: ssl.SSLContext | None = None
    """The object store's own server context, when it is not `tls`."""
    hosts: Hosts = field(default_factory=Hosts)
    file_urls: Literal["v5", "v4"] = "v5"
    """The shape of the file URLs handed out until `move_file_urls` moves them."""
    downgrade_hop: bool = False
    """A photo's file URL redirects first to plain `http://` on the storage host's name and another
    port, which notes any `Authorization` header it receives and sends the client on to the object
    store: over TLS, a client that kept the token on that hop would send it in clear text."""
    padded_files: set[int] = field(default_factory=set)
    """Photo ids whose object-store body carries 100 bytes more than the listing's `size`, sent
    without a `Content-Length` (chunked), so only the listed size can tell."""
    odd_fields: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Photo ids whose record carries these values instead (an id past 2**63, `"²"` for a size, a
    time in year 1): what a broken or hostile upstream may send."""
    raw_listing: dict[int, bytes] = field(default_factory=dict)
    """Project ids whose image listing answers these bytes as its JSON body (say, arrays nested
    200,000 deep)."""
    echoing_files: set[int] = field(default_factory=set)
    """Photo ids whose file URL on the storage host answers 403 with a body that echoes secrets: the
    request's `Authorization` header, the client secret, and signed URLs of odd schemes and case."""
    relative_links: bool = False
    endless_links: bool = False
    """Every listing page links to a next one, for ever (past the last, the last page's items
    again), and no page carries a `Total`."""
    also_in: dict[int, int] = field(default_factory=dict)
    """Photo id -> another project id whose listings show that photo too (data moved between
    projects: the same id in two of them)."""
    projects_twice: bool = False
    """The projects listing shows every project twice (its `Total` counting both)."""
    total_offset: int = 0
    """Added to every listing's `Total`: 1 makes a header that is always one too high, so no
    listing can be proven and a naive prover splits its pieces for ever."""
    """`Link` headers carry URLs relative to the request (`/rest/v1.0/...`), as RFC 8288 allows."""


@dataclass
class ListingRequest:
    """What a listing hook sees: a page about to be served."""

    project_id: int
    page: int
    per_page: int
    view: str
    query: dict[str, str] = field(default_factory=dict)
    """The request's query string (filters, sort, ...)."""


MAX_ARRIVALS = 1_000_000
"""Request times kept for `/_sim/stats?since=`: a simulator left running forgets the oldest."""


USER: web.RequestKey[int | None] = web.RequestKey("user")
"""The user whose access token a request carries; None for a service account."""


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    arrivals: list[float] = field(default_factory=list)
    """Wall-clock times (`time.time()`) of the requests to the API origin (`/_sim/` reads too), in
    order: when a client that started at a known time sent its first request."""
    downloads: Counter[int] = field(default_factory=Counter)
    """Complete object-store bodies sent, by photo id."""
    file_requests: Counter[int] = field(default_factory=Counter)
    """Requests for each photo's file URL on the storage host (the hop before the object store)
    that carried a valid token and signature."""
    bytes_sent: int = 0
    resumed: int = 0
    """Object-store answers that resumed a body part-way (206 with a start above zero)."""
    rate_limited: int = 0
    store_authorization_headers: list[str] = field(default_factory=list)
    """Every Authorization header the object store received; must stay empty."""
    plain_authorization_headers: list[str] = field(default_factory=list)
    """Every Authorization header the plain-HTTP hop (`downgrade_hop`) received; must stay empty."""
    tokens_issued: int = 0
    unauthorized: int = 0
    """Answers 401 for a missing, unknown or expired token, by the API or the storage host."""
    token_life_left: float = math.inf
    """The least time a token had left to live when a request carried it."""

    def arrived(self, now: float) -> None:
        """Note a request's arrival; kept sorted for bisect even if the clock steps back."""
        self.arrivals.append(max(now, self.arrivals[-1]) if self.arrivals else now)
        if len(self.arrivals) > MAX_ARRIVALS:
            del self.arrivals[: MAX_ARRIVALS // 2]


def _accepts_jpeg(accept: str) -> bool:
    """Whether an `Accept` header takes a JPEG (a browser's does; `application/json` alone does not)."""
    ranges = {item.split(";")[0].strip().lower() for item in accept.split(",")}
    return bool(ranges & {"*/*", "image/*", "image/jpeg", ""})


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _parse_bound(text: str, *, end: bool) -> datetime:
    """One end of a range; a bare date covers its whole day (inclusive ends)."""
    if len(text) == 10:
        day = datetime.fromisoformat(text).replace(tzinfo=UTC)
        return day + timedelta(days=1, microseconds=-1) if end else day
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(text)
    return value


def _parse_range(text: str) -> tuple[datetime, datetime]:
    start, _, stop = text.partition("...")
    return _parse_bound(start, end=False), _parse_bound(stop or start, end=True)


class _BadRequest(Exception):
    pass


def _ints(query: MultiMapping[str], key: str) -> list[int] | None:
    values = query.getall(f"filters[{key}][]", None) or query.getall(f"filters[{key}]", None)
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise _BadRequest(f"filters[{key}] must be integers") from None


def _flag(query: MultiMapping[str], key: str) -> bool | None:
    """A boolean filter: `true` or `false` in any case (a Python client sends `True`), else 400."""
    value = query.get(f"filters[{key}]")
    if value is None:
        return None
    if value.lower() not in ("true", "false"):
        raise _BadRequest(f"filters[{key}] must be true or false")
    return value.lower() == "true"


class Simulator:
    def __init__(self, config: SimConfig | None = None, *, company: Company | None = None) -> None:
        self.config = config or SimConfig()
        c = self.config
        self.company = company or generate_company(
            c.seed,
            projects=c.projects,
            photos=c.photos,
            albums_per_project=c.albums_per_project,
            photo_size=c.photo_size,
            company_id=c.company_id,
        )
        if c.sub_second:
            self._refine_times(random.Random(c.seed + 2))
        if c.tied:
            self._tie(c.tied)
        self.limits = RateLimits(
            hourly=c.hourly_limit,
            hourly_window=c.hourly_window,
            spike=c.spike_limit,
            spike_window=c.spike_window,
        )
        self.stats = Stats()
        self.listing_hooks: list[Callable[[ListingRequest], None]] = []
        self.tokens: dict[str, float] = {}
        self.sign_in = SignIn(
            client_id=c.client_id,
            client_secret=c.client_secret,
            company=(self.company.id, self.company.name),
            projects=sorted(self.company.projects),
            live=self.tokens,
        )
        self._key = secrets.token_bytes(32)
        self._rng = random.Random(c.seed + 1)
        self._runners: list[web.AppRunner] = []
        self._orders: dict[tuple[Any, ...], tuple[list[SimPhoto], list[tuple[int, int]]]] = {}
        self.api_base = ""
        self.login_base = ""
        self.storage_base = ""
        self.store_base = ""
        self.plain_base = ""
        self._url_shape = c.file_urls
        self._url_moves = 0
        self._file_paths: dict[tuple[int, int], str] = {}
        """(photo id, version) -> the path of its file URL on the storage host."""
        self._files: dict[str, tuple[int, int]] = {}
        """The other way round: what each path handed out (since the last move) serves."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", api_port: int = 0, store_port: int = 0, storage_port: int = 0
    ) -> None:
        """Listen on `host` (the same for every origin); the URLs name `config.hosts`."""
        tls, names = self.config.tls, self.config.hosts
        origins = [
            (self._api_app(), api_port, "api_base", names.api, tls),
            (self._storage_app(), storage_port, "storage_base", names.storage, tls),
            (self._store_app(), store_port, "store_base", names.store, self.config.store_tls or tls),
        ]
        if self.config.downgrade_hop:
            origins.append((self._plain_app(), 0, "plain_base", names.storage, None))
        for app, port, attr, name, context in origins:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, host, port, ssl_context=context)
            await site.start()
            self._runners.append(runner)
            bound = runner.addresses[0][1]
            setattr(self, attr, f"{'https' if context else 'http'}://{name}:{bound}")
        self.login_base = str(URL(self.api_base).with_host(names.login))

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def procore_settings(self) -> dict[str, Any]:
        """The `procore:` config section that points a syncer at this simulator."""
        return {
            "api_base": self.api_base,
            "login_base": self.login_base,
            "company_id": self.company.id,
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret,
        }

    def _tie(self, count: int) -> None:
        first = min(self.company.projects)
        group = sorted(
            (p for p in self.company.photos.values() if p.project_id == first), key=lambda p: p.id
        )[:count]
        moment = max(p.updated_at for p in group)
        for photo in group:
            photo.created_at = photo.updated_at = moment

    def _refine_times(self, rng: random.Random) -> None:
        """Give the stored times their fractions of a second. Equal times stay equal (a photo
        never edited keeps `updated_at == created_at`; a bulk edit stored one moment)."""
        fractions: dict[datetime, datetime] = {}

        def finer(value: datetime) -> datetime:
            if value not in fractions:
                micros = 0 if rng.random() < 0.25 else rng.randrange(1, 1_000_000)
                fractions[value] = value + timedelta(microseconds=micros)
            return fractions[value]

        for photo in self.company.photos.values():
            photo.updated_at = finer(photo.updated_at)
            if photo.created_at is not None:
                photo.created_at = finer(photo.created_at)

    def tied_photos(self) -> list[int]:
        """The ids of the photos made to share one second (`SimConfig.tied`) that still do."""
        first = min(self.company.projects)
        photos = [p for p in self.company.photos.values() if p.project_id == first]
        seconds = Counter((p.created_at, p.updated_at) for p in photos)
        moment, _ = seconds.most_common(1)[0]
        return sorted(p.id for p in photos if (p.created_at, p.updated_at) == moment)

    # -- what tests change -------------------------------------------------------------------

    def now(self) -> datetime:
        """The time an edit stores (`SimConfig.sub_second`: with its fraction of a second)."""
        now = datetime.now(UTC)
        return now if self.config.sub_second else now.replace(microsecond=0)

    def changed(self) -> None:
        """Forget cached listing orders; call after changing `company` data directly."""
        self._orders.clear()

    def edit_photo(self, photo_id: int, **changes: Any) -> SimPhoto:
        """A metadata edit: changes fields and moves `updated_at` to now."""
        photo = self.company.photos[photo_id]
        for key, value in changes.items():
            if not hasattr(photo, key):
                raise AttributeError(key)
            setattr(photo, key, value)
        photo.updated_at = self.now()
        self.changed()
        return photo

    def replace_photo(self, photo_id: int, *, size: int | None = None) -> SimPhoto:
        """A new file for an existing photo: new bytes, new URL path, usually a new size."""
        photo = self.company.photos[photo_id]
        photo.version += 1
        photo.requested_size = size if size is not None else photo.requested_size + 1_234
        photo.updated_at = self.now()
        self.changed()
        return photo

    def add_photo(self, project_id: int, **fields: Any) -> SimPhoto:
        """A new upload: a copy of a project's photo under a new id, created and updated now
        (unless `fields` say otherwise)."""
        template = next(p for p in self.company.photos.values() if p.project_id == project_id)
        now = self.now()
        photo = replace(
            template,
            **{
                "id": max(self.company.photos) + 7,
                "created_at": now,
                "updated_at": now,
                "taken_at": now,
                "version": 1,
                "deleted": False,
                "_content": None,
                **fields,
            },
        )
        self.company.photos[photo.id] = photo
        self.changed()
        return photo

    def delete_photo(self, photo_id: int) -> None:
        self.company.photos[photo_id].deleted = True
        self.changed()

    def restore_photo(self, photo_id: int, *, keep_time: bool = False) -> None:
        """Undo a deletion (Procore's recycle bin): the photo is back, updated now, or with the
        `updated_at` it had (`keep_time`), which no incremental window will see."""
        photo = self.company.photos[photo_id]
        photo.deleted = False
        if not keep_time:
            photo.updated_at = self.now()
        self.changed()

    def move_file_urls(self, shape: Literal["v5", "v4"] = "v5") -> None:
        """Move every photo's file URL to a new opaque name, in `shape`, as Procore has moved them
        (from S3 to its storage host, from v4 to v5): the bytes, sizes and `updated_at` stay as
        they are. The URLs handed out before answer 404 from now on."""
        self._url_shape = shape
        self._url_moves += 1
        self._file_paths.clear()
        self._files.clear()

    def expected_files(self) -> dict[int, bytes]:
        """Every live photo's bytes, by id: what a complete mirror holds."""
        return {p.id: p.content.all_bytes() for p in self.company.photos.values() if not p.deleted}

    # -- shared helpers ----------------------------------------------------------------------

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}|{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def _signed_ok(self, path: str, signature: str, expiry: str, *, base: int = 10) -> str | None:
        """None when the signature holds, else the reason it does not."""
        try:
            expires = int(expiry, base)
        except ValueError:
            return "missing expiry"
        if not hmac.compare_digest(self._sign(path, expires), signature):
            return "signature does not match"
        if time.time() > expires:
            return "request has expired"
        return None

    def _file_path(self, photo: SimPhoto) -> str:
        """The path of the photo's current file on the storage host: an opaque name, the same for
        every simulator with this seed until the file is replaced or the URLs move."""
        version = (photo.id, photo.version)
        if (path := self._file_paths.get(version)) is None:
            seed = f"{self.config.seed}|{self._url_moves}|{photo.id}|{photo.version}".encode()
            digits = int.from_bytes(hashlib.sha256(seed).digest()[:17])
            if self._url_shape == "v5":  # a ULID: 26 Crockford base32 digits
                name = "".join(CROCKFORD[(digits >> (5 * i)) & 31] for i in range(26))
            else:  # <upload time>_production_<id>.jpeg
                name = f"{1_500_000_000 + digits % 10**8}_production_{(digits >> 64) % 10**12}.jpeg"
            path = FILE_PATHS[self._url_shape].format(company=self.company.id, name=name)
            self._file_paths[version] = path
            self._files[path] = version
        return path

    def _photo_url(self, photo: SimPhoto) -> str:
        path = self._file_path(photo)
        expires = int(time.time() + self.config.url_ttl)
        # No expiry parameter, as Procore's URLs have none: the signature holds it (in hex, after
        # the MAC), unreadable to a client.
        sig = f"{self._sign(path, expires)}{expires:x}"
        project = (
            f"companyId={self.company.id}&projectId={photo.project_id}&" if self._url_shape == "v5" else ""
        )
        return f"{self.storage_base}{path}?{project}sig={sig}"

    def _fault(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _serialize(self, photo: SimPhoto) -> dict[str, Any]:
        album = self.company.albums.get(photo.album_id) if photo.album_id else None
        return {
            "id": photo.id,
            "url": self._photo_url(photo),
            "thumbnail_url": self._photo_url(photo) + "&variant=thumbnail",
            "size": photo.content.size,
            "filename": photo.filename,
            "description": photo.description,
            "taken_at": _ts(photo.taken_at),
            "created_at": _ts(photo.created_at),
            "updated_at": _ts(photo.updated_at),
            "location": photo.location,
            "image_category_id": photo.album_id,
            "image_category_name": album.name if album else None,
            "image_category_private": album.private if album else None,
            "permanently_deleted": False,
            "private": photo.private,
            "starred": photo.starred,
            "projection": photo.projection,
            "width": 640 if photo.requested_size >= 20_000 else 96,
            "height": 480 if photo.requested_size >= 20_000 else 72,
            "origin_id": None,
            "daily_log_header_id": None,
            "daily_log_segment_id": photo.daily_log_segment_id,
            "log_date": photo.log_date.isoformat() if photo.log_date else None,
            "gps_lat": photo.gps[0] if photo.gps else None,
            "gps_long": photo.gps[1] if photo.gps else None,
            "uploader": photo.uploader,
            "links": {},
            "trades": photo.trades,
            "comments_count": 0,
            **self.config.odd_fields.get(photo.id, {}),
        }

    # -- the API origin ----------------------------------------------------------------------

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._api_middleware])
        app.router.add_post("/oauth/token", self._token, name="token")
        app.router.add_get("/oauth/authorize", self.sign_in.authorize, name="authorize")
        app.router.add_post("/oauth/authorize", self.sign_in.authorize, name="authorize_form")
        app.router.add_post("/oauth/revoke", self.sign_in.revoke, name="revoke")
        app.router.add_get("/rest/v1.0/me", self._me, name="me")
        app.router.add_get("/rest/v1.0/companies", self._companies, name="companies")
        app.router.add_get("/rest/v1.0/projects", self._projects, name="projects")
        app.router.add_get("/rest/v1.0/image_categories", self._albums, name="albums")
        app.router.add_get("/rest/v1.0/images", self._images, name="images")
        app.router.add_get("/rest/v1.0/images/{id}", self._image, name="image")
        app.router.add_get("/_sim/stats", self._stats, name="sim_stats")
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        """The simulator's own counters, for benchmarks and people; not part of Procore's API.
        With `?since=T` (a Unix time), `first_request_after` is when the first API request at or
        after T arrived (null if none has)."""
        s = self.stats
        try:
            since = float(request.query.get("since", "inf"))
        except ValueError:
            raise web.HTTPBadRequest(text="since: a Unix time") from None
        at = bisect.bisect_left(s.arrivals, since)
        return web.json_response(
            {
                "first_request_after": s.arrivals[at] if at < len(s.arrivals) else None,
                "requests": dict(s.requests),
                "downloads": sum(s.downloads.values()),
                "bytes_sent": s.bytes_sent,
                "resumed": s.resumed,
                "rate_limited": s.rate_limited,
                "tokens_issued": s.tokens_issued,
                "store_authorization_headers": len(s.store_authorization_headers),
            }
        )

    def _injected_error(self, headers: dict[str, str]) -> web.Response | None:
        """A 500, 502 or 503 (with `Retry-After`) for a share `error_rate` of answers."""
        if not self._fault(self.config.error_rate):
            return None
        status = self._rng.choice([500, 502, 503])
        retry = {"Retry-After": str(self.config.retry_after)} if status == 503 else {}
        return web.Response(
            status=status,
            text="<html><body>upstream error</body></html>",
            content_type="text/html",
            headers={**headers, **retry},
        )

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.stats.requests[request.match_info.route.name or "unknown"] += 1
        self.stats.arrived(time.time())
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        if request.path.startswith("/_sim/") or request.path in ("/oauth/authorize", "/oauth/revoke"):
            return await handler(request)
        if request.path == "/oauth/token":
            failed = self._injected_error({}) if self.config.token_faults else None
            return failed or await handler(request)
        limit_headers, refused = self._admit(request, counted=True)
        if refused is not None:
            return refused
        if (refused := self._company_refusal(request, limit_headers)) is not None:
            return refused
        try:
            response = await handler(request)
        except _BadRequest as exc:
            return web.json_response({"errors": str(exc)}, status=400, headers=limit_headers)
        response.headers.update(limit_headers)
        return self._maybe_broken(response)

    def _admit(self, request: web.Request, *, counted: bool) -> tuple[dict[str, str], web.Response | None]:
        """What every API and storage request meets first, in Procore's order: the rate limit (if
        `counted`), an injected fault, the bearer token. The rate-limit headers, and the refusal if
        there is one; an admitted request's user is noted in it."""
        limit_headers: dict[str, str] = {}
        if counted:
            allowed, limit_headers = self.limits.take()
            if not allowed:
                self.stats.rate_limited += 1
                headers = dict(limit_headers)
                if self._rng.random() < 0.5:  # Procore only sometimes says how long to wait
                    reset = int(limit_headers["X-Rate-Limit-Reset"])
                    headers["Retry-After"] = str(max(1, math.ceil(reset - time.time())))
                return limit_headers, web.Response(status=429, text="Rate limit exceeded", headers=headers)
        if (failed := self._injected_error(limit_headers)) is not None:
            return limit_headers, failed
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        if not auth.startswith("Bearer ") or self.tokens.get(token, 0) < time.time():
            self.stats.unauthorized += 1
            return limit_headers, web.json_response(
                {"errors": "Unauthorized"}, status=401, headers=limit_headers
            )
        self.stats.token_life_left = min(self.stats.token_life_left, self.tokens[token] - time.time())
        request[USER] = self.sign_in.access_tokens.get(token)
        return limit_headers, None

    def _company_refusal(self, request: web.Request, headers: dict[str, str]) -> web.Response | None:
        """Procore's answer to an API call without the company header, for a company the caller
        cannot see, or (a user) in a company that refuses apps its admins did not install. Who
        signed in and their companies are asked before any company is chosen."""
        if not request.path.startswith("/rest/") or request.path in ("/rest/v1.0/me", "/rest/v1.0/companies"):
            return None
        company = request.headers.get("Procore-Company-Id")
        if not company:
            return web.json_response(
                {"errors": "Missing Procore-Company-Id header!"}, status=400, headers=headers
            )
        if company != str(self.company.id):
            refusal: str | None = "You do not have access to this company"
        elif (user := request[USER]) is not None:
            refusal = self.sign_in.company_refusal(user, self.company.id)
        else:
            refusal = None
        return (
            None if refusal is None else web.json_response({"errors": refusal}, status=403, headers=headers)
        )

    def _maybe_broken(self, response: web.StreamResponse) -> web.StreamResponse:
        """For a share `broken_json_rate` of JSON answers: the body cut in half, or an HTML page."""
        if not (
            isinstance(response, web.Response)
            and response.content_type == "application/json"
            and self._fault(self.config.broken_json_rate)
        ):
            return response
        body = response.body if isinstance(response.body, bytes) else b""
        broken = body[: len(body) // 2] if self._rng.random() < 0.5 else b"<html>Bad Gateway</html>"
        return web.Response(
            body=broken,
            status=200,
            content_type="application/json",
            headers={
                k: v
                for k, v in response.headers.items()
                if k.lower() not in ("content-type", "content-length")
            },
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") not in ("client_credentials", "authorization_code", "refresh_token"):
            return web.json_response(
                {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported.",
                },
                status=400,
            )
        client_id, client_secret = client_credentials(request.headers, form)
        if not (
            hmac.compare_digest(client_id, self.config.client_id)
            and hmac.compare_digest(client_secret, self.config.client_secret)
        ):
            return web.json_response(
                {
                    "error": "invalid_client",
                    "error_description": "Client authentication failed due to unknown client.",
                },
                status=401,
            )
        if form.get("grant_type") != "client_credentials":
            granted = self.sign_in.grant({k: str(v) for k, v in form.items()}, time.time())
            if isinstance(granted, web.Response):
                return granted
            if self.sign_in.refresh_delay and form.get("grant_type") == "refresh_token":
                await asyncio.sleep(self.sign_in.refresh_delay)  # the old token is already spent
            self.tokens[granted[1]["access_token"]] = time.time() + self.sign_in.token_ttl
            self.stats.tokens_issued += 1
            return web.json_response(granted[1])
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.time() + self.config.token_ttl
        self.stats.tokens_issued += 1
        return web.json_response(
            {
                "access_token": token,
                "token_type": "bearer",
                "expires_in": int(self.config.token_ttl),
                "created_at": int(time.time()),
            }
        )

    def _paginate(
        self, request: web.Request, total: int, window: Callable[[int, int], list[Any]]
    ) -> web.Response:
        """A page of `total` items, `window(start, stop)` giving the items, with Procore's headers."""
        try:
            page = max(1, int(request.query.get("page", "1")))
            per_page = max(1, int(request.query.get("per_page", "100")))
        except ValueError:
            raise _BadRequest("page and per_page must be integers") from None
        per_page = min(per_page, self.config.max_per_page)
        last = max(1, math.ceil(total / per_page))
        served = min(page, last) if self.config.endless_links else page  # endless: items repeat
        chunk = (
            window((served - 1) * per_page, min(total, served * per_page))
            if (served - 1) * per_page < total
            else []
        )

        def link(n: int) -> str:
            url = request.url.update_query(page=str(n), per_page=str(per_page))
            return f"<{'' if self.config.relative_links else self.api_base}{url.path_qs}>"

        links = [f'{link(1)}; rel="first"', f'{link(last)}; rel="last"']
        if page > 1:
            links.append(f'{link(page - 1)}; rel="prev"')
        if page < last or self.config.endless_links:
            links.append(f'{link(page + 1)}; rel="next"')
        headers = {"Total": str(total + self.config.total_offset), "Per-Page": str(per_page)}
        if self.config.endless_links:
            del headers["Total"]
        if not self.config.per_page_header:
            del headers["Per-Page"]
        return web.json_response(chunk, headers={**headers, "Link": ", ".join(links)})

    def _paginate_list(self, request: web.Request, items: list[Any]) -> web.Response:
        return self._paginate(request, len(items), lambda a, b: items[a:b])

    def _project_id(self, request: web.Request) -> int:
        try:
            pid = int(request.query["project_id"])
        except (KeyError, ValueError):
            raise _BadRequest("project_id is required") from None
        if pid not in self.company.projects:
            raise web.HTTPNotFound(
                text=json.dumps({"errors": "Project not found"}), content_type="application/json"
            )
        if not self._sees(request, pid):
            raise web.HTTPForbidden(
                text=json.dumps({"errors": "You do not have access to this project"}),
                content_type="application/json",
            )
        return pid

    def _sees(self, request: web.Request, project_id: int) -> bool:
        """A service account sees every project; a user the projects they are a member of."""
        user = request.get(USER)
        return user is None or project_id in self.sign_in.users[user].projects

    async def _me(self, request: web.Request) -> web.Response:
        return web.json_response(self.sign_in.me(request[USER]))

    async def _companies(self, request: web.Request) -> web.Response:
        companies = self.sign_in.companies(request[USER], (self.company.id, self.company.name))
        return self._paginate_list(request, companies)

    async def _projects(self, request: web.Request) -> web.Response:
        """Like Procore's: active projects only, unless `filters[by_status]` is `All` or `Inactive`
        (any other value is ignored, as Procore ignores what it does not know)."""
        if request.query.get("company_id") != str(self.company.id):
            raise _BadRequest("company_id is required")
        status = request.query.get("filters[by_status]")
        shown = {"All": (True, False), "Inactive": (False,)}.get(status or "", (True,))
        return self._paginate_list(
            request,
            [
                {
                    "id": p.id,
                    "name": p.name,
                    "display_name": p.name,
                    "active": p.active,
                    "company": {"id": self.company.id, "name": self.company.name},
                }
                for p in self.company.projects.values()
                if self._sees(request, p.id) and p.active in shown
            ]
            * (2 if self.config.projects_twice else 1),
        )

    async def _albums(self, request: web.Request) -> web.Response:
        pid = self._project_id(request)
        live = Counter(p.album_id for p in self.company.live_photos(pid))
        albums = sorted(
            (a for a in self.company.albums.values() if a.project_id == pid),
            key=lambda a: a.position,
        )
        return self._paginate_list(
            request,
            [
                {
                    "id": a.id,
                    "name": a.name,
                    "private": a.private,
                    "position": a.position,
                    "count": live[a.id],
                }
                for a in albums
            ],
        )

    def _matches(self, photo: SimPhoto, query: MultiMapping[str]) -> bool:  # noqa: PLR0911, PLR0912
        q = query
        if "image_category_id" in q and str(photo.album_id) != q["image_category_id"]:
            return False
        if (ids := _ints(q, "daily_log_segment_id")) is not None and photo.daily_log_segment_id not in ids:
            return False
        if (ids := _ints(q, "id")) is not None and photo.id not in ids:
            return False
        if (ids := _ints(q, "uploader_id")) is not None and photo.uploader["id"] not in ids:
            return False
        if (ids := _ints(q, "trade_ids")) is not None and not {t["id"] for t in photo.trades} & set(ids):
            return False
        if (ids := _ints(q, "location_id")) is not None:
            loc = photo.location or {}
            sub = _flag(q, "include_sublocations") and loc.get("parent_id") in ids
            if loc.get("id") not in ids and not sub:
                return False
        for flag in ("private", "starred"):
            if (wanted := _flag(q, flag)) is not None and getattr(photo, flag) != wanted:
                return False
        if (v := q.get("filters[projection]")) is not None and photo.projection != v:
            return False
        if (
            v := q.get("filters[query]")
        ) is not None and v.lower() not in f"{photo.filename} {photo.description}".lower():
            return False
        try:
            if (v := q.get("filters[log_date]")) is not None:
                lo, hi = _parse_range(v)
                if photo.log_date is None or not lo.date() <= photo.log_date <= hi.date():
                    return False
            for name in ("created_at", "updated_at"):
                if (v := q.get(f"filters[{name}]")) is not None:
                    lo, hi = _parse_range(v)
                    value = getattr(photo, name)
                    if value is None or not self._in_range(value, lo, hi):  # never a null
                        return False
        except ValueError:
            raise _BadRequest("invalid date range") from None
        return True

    def _in_range(self, value: datetime, lo: datetime, hi: datetime) -> bool:
        if self.config.range_end == "exclusive":
            return lo <= value < hi
        return lo <= value <= hi

    def _ordered(self, pid: int, query: MultiMapping[str]) -> tuple[list[SimPhoto], list[tuple[int, int]]]:
        """The matching photos sorted by a documented key, and the runs of equal keys in it.

        Cached per query until the data changes; ties are shuffled per request by `_window`."""
        sort = query.get("sort")
        key_name = (sort or "").lstrip("-")
        if key_name not in SORTS:  # undocumented sort values are ignored, as Procore may do
            key_name, sort = "created_at", "-created_at"
        cache_key = (
            pid,
            sort,
            tuple(sorted((k, v) for k, v in query.items() if k not in ("page", "per_page"))),
        )
        if (cached := self._orders.get(cache_key)) is not None:
            return cached
        epoch = datetime.min.replace(tzinfo=UTC)

        def key(p: SimPhoto) -> datetime:
            if key_name == "taken_at":
                return p.taken_at or epoch
            if key_name in ("created_at", "exposure_date"):
                return p.created_at or epoch
            return p.updated_at if key_name == "most_recent" else epoch

        shared = [self.company.photos[i] for i, other in self.config.also_in.items() if other == pid]
        listed = self.company.live_photos(pid) + [p for p in shared if not p.deleted]
        photos = [p for p in listed if self._matches(p, query)]
        ordered = sorted(photos, key=key, reverse=(sort or "").startswith("-"))
        ties: list[tuple[int, int]] = []
        start = 0
        for i in range(1, len(ordered) + 1):
            if i == len(ordered) or key(ordered[i]) != key(ordered[start]):
                if i - start > 1:
                    ties.append((start, i))
                start = i
        self._orders[cache_key] = (ordered, ties)
        return ordered, ties

    def _window(self, ordered: list[SimPhoto], ties: list[tuple[int, int]], a: int, b: int) -> list[SimPhoto]:
        """Items [a, b) with every run of equal keys in a fresh random order, as on every request."""
        out = ordered[a:b]
        for start, stop in ties[max(0, bisect.bisect_right(ties, (a, a)) - 1) :]:
            if start >= b:
                break
            if stop <= a:
                continue
            members = ordered[start:stop]
            self._rng.shuffle(members)
            for i in range(max(start, a), min(stop, b)):
                out[i - a] = members[i - start]
        return out

    async def _images(self, request: web.Request) -> web.Response:
        pid = self._project_id(request)
        view = request.query.get("serializer_view", "normal")
        page = int(request.query.get("page", "1")) if request.query.get("page", "1").isdigit() else 1
        per_page = (
            int(request.query.get("per_page", "100"))
            if request.query.get("per_page", "100").isdigit()
            else 100
        )
        for hook in list(self.listing_hooks):
            hook(
                ListingRequest(
                    project_id=pid, page=page, per_page=per_page, view=view, query=dict(request.query)
                )
            )
        if (raw := self.config.raw_listing.get(pid)) is not None:
            return web.Response(body=raw, content_type="application/json")
        ordered, ties = self._ordered(pid, request.query)

        def window(a: int, b: int) -> list[Any]:
            photos = [p for p in self._window(ordered, ties, a, b) if p.id not in self.config.hidden]
            return [p.id for p in photos] if view == "ids_only" else [self._serialize(p) for p in photos]

        return self._paginate(request, len(ordered), window)

    async def _image(self, request: web.Request) -> web.Response:
        pid = self._project_id(request)
        try:
            photo = self.company.photos[int(request.match_info["id"])]
        except (KeyError, ValueError):
            photo = None
        if photo is None or photo.deleted or pid not in (photo.project_id, self.config.also_in.get(photo.id)):
            return web.json_response({"errors": "Not Found"}, status=404)
        return web.json_response(self._serialize(photo))

    # -- the storage host --------------------------------------------------------------------

    def _storage_app(self) -> web.Application:
        app = web.Application(middlewares=[self._storage_middleware])
        for shape, path in FILE_PATHS.items():
            app.router.add_get(
                path.format(company="{company}", name="{name}"), self._file, name=f"file_{shape}"
            )
        app.router.add_get("/hop/{left}/{key}", self._hop, name="hop")
        return app

    @web.middleware
    async def _storage_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Procore's storage host: the bearer token is needed (since June 2023), and it serves
        files, not JSON: a request that will take nothing but JSON is refused."""
        self.stats.requests[request.match_info.route.name or "unknown"] += 1
        if self.config.latency:
            await asyncio.sleep(self.config.latency)
        limit_headers, refused = self._admit(request, counted=self.config.count_file_requests)
        if refused is not None:
            return refused
        if not _accepts_jpeg(request.headers.get("Accept", "*/*")):
            return web.Response(status=406, text="Not Acceptable", headers=limit_headers)
        response = await handler(request)
        response.headers.update(limit_headers)
        return response

    async def _file(self, request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per case
        sig = request.query.get("sig", "")
        if (reason := self._signed_ok(request.path, sig[:32], sig[32:], base=16)) is not None:
            status = 401 if "expired" in reason else 403  # Procore answers either, by case
            return web.json_response({"errors": f"Forbidden: {reason}"}, status=status)
        if (version := self._files.get(request.path)) is None:  # a URL from before a move
            return web.json_response({"errors": "Not Found"}, status=404)
        photo_id, number = version
        self.stats.file_requests[photo_id] += 1
        if (fault := self._file_fault(request, photo_id)) is not None:
            return fault
        photo = self.company.photos.get(photo_id)
        if photo is None or photo.deleted:
            return web.json_response({"errors": "Not Found"}, status=404)
        key = f"{photo_id:x}v{number}"
        if self.config.downgrade_hop:
            return web.Response(status=302, headers={"Location": f"{self.plain_base}/storage/plain/{key}"})
        if self.config.redirect_hops > 1:
            up = "../" * (request.path.count("/") - 1)  # relative to this path, back to the root
            return web.Response(
                status=302, headers={"Location": f"{up}hop/{self.config.redirect_hops - 1}/{key}"}
            )
        return self._to_store(key)

    def _file_fault(self, request: web.Request, photo_id: int) -> web.Response | None:
        """The failure configured for this photo's file URL, if any."""
        if photo_id in self.config.echoing_files:
            echo = (  # short enough that all of it is in an error's excerpt
                "HTTP://S/Y?X-Amz-Signature=AMZSECRET gopher://s/x?sig=SIGSECRET "
                f"{request.headers.get('Authorization')} client_secret={self.config.client_secret}"
            )
            return web.Response(status=403, text=echo)
        if photo_id in self.config.broken_files:
            return web.Response(
                status=500,
                text=f"<html><body>{html.escape(self.config.broken_file_text)}</body></html>",
                content_type="text/html",
            )
        return None

    async def _hop(self, request: web.Request) -> web.Response:
        """One more redirect on the storage host on the way to the object store."""
        left, key = int(request.match_info["left"]), request.match_info["key"]
        if left <= 1:
            return self._to_store(key)
        status = (301, 307, 308)[left % 3]
        return web.Response(status=status, headers={"Location": f"/hop/{left - 1}/{key}"})

    def _to_store(self, key: str) -> web.Response:
        """The redirect to the object store: a presigned URL that must not get the token."""
        path = f"/bucket/{key}"
        expires = int(time.time() + self.config.url_ttl)
        location = (
            f"{self.store_base}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires={int(self.config.url_ttl)}"
            f"&X-Amz-Date={expires}&X-Amz-Signature={self._sign(path, expires)}"
        )
        return web.Response(status=302, headers={"Location": location})

    def _plain_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/storage/plain/{key}", self._plain_hop)
        return app

    async def _plain_hop(self, request: web.Request) -> web.Response:
        """The hop over plain HTTP (`downgrade_hop`): on to the object store, token or not."""
        if auth := request.headers.get("Authorization"):
            self.stats.plain_authorization_headers.append(auth)
        return self._to_store(request.match_info["key"])

    # -- the object store --------------------------------------------------------------------

    def _store_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/bucket/{key}", self._object)
        return app

    @staticmethod
    def _s3_error(status: int, code: str, message: str) -> web.Response:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        )
        return web.Response(status=status, text=body, content_type="application/xml")

    def _find_version(self, key: str) -> SimPhoto | None:
        ident, _, version = key.partition("v")
        try:
            photo = self.company.photos.get(int(ident, 16))
        except ValueError:
            return None
        return photo if photo is not None and str(photo.version) == version else None

    def _range(self, request: web.Request, size: int, etag: str) -> tuple[int, int] | None:
        """The one byte range a `Range` header asks for and this store serves, if any; none when
        `If-Range` names another version (the whole body is sent instead, as S3 does)."""
        asked = request.headers.get("Range", "")
        if not self.config.range_support or not asked.startswith("bytes=") or "," in asked:
            return None
        if (condition := request.headers.get("If-Range")) is not None and condition != etag:
            return None
        lo, _, hi = asked.removeprefix("bytes=").partition("-")
        if not lo.isdigit() or int(lo) >= size:
            return None
        return int(lo), min(size, int(hi) + 1) if hi.isdigit() else size

    async def _send_body(
        self,
        request: web.Request,
        response: web.StreamResponse,
        photo: SimPhoto,
        start: int,
        end: int,
        *,
        padded: bool,
    ) -> bool:
        """Stream bytes `start..end` of the photo (paced, possibly cut short or padded); False if
        the connection was dropped mid-body."""
        cut_at = start + (end - start) // 2 if self._fault(self.config.cut_rate) else None
        sent = start
        for piece in photo.content.iter_bytes(start, end):
            if cut_at is not None and sent + len(piece) > cut_at:
                await response.write(piece[: cut_at - sent])
                self.stats.bytes_sent += cut_at - sent
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-body
                return False
            await response.write(piece)
            sent += len(piece)
            self.stats.bytes_sent += len(piece)
            if self.config.bandwidth:
                await asyncio.sleep(len(piece) / self.config.bandwidth)
        if padded:
            await response.write(b"\0" * 100)
        return True

    async def _object(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests["object"] += 1
        if "Authorization" in request.headers:
            self.stats.store_authorization_headers.append(request.headers["Authorization"])
            return self._s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
                "or the Authorization header should be specified",
            )
        query = request.query
        if (
            reason := self._signed_ok(
                request.path, query.get("X-Amz-Signature", ""), query.get("X-Amz-Date", "")
            )
        ) is not None:
            return self._s3_error(403, "AccessDenied", reason)
        if self.config.store_latency:
            await asyncio.sleep(self.config.store_latency)
        if self._fault(self.config.error_rate) or self._fault(self.config.store_error_rate):
            return self._s3_error(503, "SlowDown", "Please reduce your request rate.")
        photo = self._find_version(request.match_info["key"])
        if photo is None:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        content = photo.content
        start, end, status = 0, content.size, 200
        headers = {
            "ETag": f'"{hashlib.md5(photo.file_key.encode()).hexdigest()}-1"',  # noqa: S324 - multipart-style ETag, not the body's MD5
            "Accept-Ranges": "bytes" if self.config.range_support else "none",
            "Content-Type": "image/jpeg",
        }
        if (asked := self._range(request, content.size, headers["ETag"])) is not None:
            start, end = asked
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{content.size}"
            self.stats.resumed += start > 0
        response = web.StreamResponse(status=status, headers=headers)
        padded = photo.id in self.config.padded_files
        if padded or self.config.chunked_bodies:
            response.enable_chunked_encoding()
        else:
            response.content_length = end - start
        await response.prepare(request)
        if await self._send_body(request, response, photo, start, end, padded=padded):
            await response.write_eof()
            if end == content.size:
                self.stats.downloads[photo.id] += 1  # a body completed, from the start or resumed
        return response
