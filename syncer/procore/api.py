"""Typed Procore endpoints that the syncer uses, over `ProcoreHttp`.

Pagination follows `Link: rel="next"` (absolute URLs, accepted only on the API origin so a
forged link cannot carry the token elsewhere) and stops at no `next` or at `[]`. `Total` and
`Per-Page` are returned with each page, because the engine proves completeness with them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from yarl import URL

from syncer.procore.http import Answer, ProcoreError, ProcoreHttp
from syncer.procore.models import Album, BadRecord, Company, Photo, Project, as_int, person, require_list
from syncer.procore.query import ImageQuery
from syncer.words import plural


class IncompleteListing(ProcoreError):
    """A listing that did not return what its `Total` promised; `projects` is what it returned."""

    def __init__(self, message: str, *, projects: list[Project]) -> None:
        super().__init__(message)
        self.projects = projects


_LINK_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?([A-Za-z]+)"?')
MAX_PAGES = 1000
"""Pages of projects or albums (300 each) before their `Link: next` chain counts as endless."""


def parse_links(header: str | None) -> dict[str, str]:
    return {rel: url for url, rel in _LINK_RE.findall(header or "")}


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    number = as_int(headers.get(name, "").strip())
    return number if number is not None and number >= 0 else None


@dataclass(frozen=True)
class Page:
    items: list[Any]
    total: int | None
    per_page: int | None
    next_url: URL | None

    def is_last(self, number: int, *, widest: int, first_total: int | None) -> bool:
        """Whether page `number` ends a pass: it is empty, it reaches `Total`, it has no `next`
        where there is no `Total`, or the pass has read one page past what the first page's
        `Total` implied (a listing that keeps growing is not chased forever).

        A page holds `Per-Page` items as the server answers it, which may be fewer than were asked
        for; a server that caps pages without saying so is measured by its widest page so far
        (`widest`), never by what was asked, or a pass would end after its first page."""
        if not self.items:
            return True
        if self.total is None:
            return self.next_url is None
        step = self.per_page or widest
        return number * step >= min(
            self.total, (first_total if first_total is not None else self.total) + step
        )


class ProcoreApi:
    def __init__(self, http: ProcoreHttp, *, company_id: int) -> None:
        self.http = http
        self.company_id = company_id

    def _page_of(self, answer: Answer, url: URL, what: str) -> Page:
        items = require_list(answer.data, what)
        nxt = parse_links(answer.headers.get("Link")).get("next")
        try:
            next_url = url.join(URL(nxt)) if nxt else None  # a relative link is taken from this page's URL
        except ValueError:
            raise ProcoreError(f"{what}: unreadable pagination link {nxt!r:.80}") from None
        if next_url is not None and next_url.origin() != self.http.api_base.origin():
            raise ProcoreError(f"{what}: pagination link leaves the API origin ({next_url.origin()})")
        return Page(
            items=items,
            total=_header_int(answer.headers, "Total"),
            per_page=_header_int(answer.headers, "Per-Page"),
            next_url=next_url,
        )

    async def _pages(self, url: URL, what: str) -> AsyncIterator[Page]:
        seen: set[str] = set()
        next_url: URL | None = url
        while next_url is not None:
            if len(seen) >= MAX_PAGES:
                raise ProcoreError(f"{what}: more than {MAX_PAGES} pages; its links never end")
            seen.add(str(next_url))
            page = self._page_of(await self.http.get_json(next_url, what=what), next_url, what)
            yield page
            if not page.items:
                return
            next_url = page.next_url if page.next_url and str(page.next_url) not in seen else None

    async def projects(self, *, closed: bool = True) -> list[Project]:
        """The company's projects, each once (a project listed twice is one project); `closed`:
        inactive ones too (Procore lists only active projects unless `filters[by_status]` says
        otherwise). A listing that returns another number than its `Total` raises
        `IncompleteListing` with what it did return: a backup must not report "0 projects,
        complete" on a short answer."""
        status = "All" if closed else "Active"
        url = self.http.api_url(
            "/rest/v1.0/projects",
            [("company_id", str(self.company_id)), ("filters[by_status]", status), ("per_page", "300")],
        )
        items: list[Any] = []
        total: int | None = None
        async for page in self._pages(url, "listing projects"):
            total = page.total if total is None else total
            items.extend(page.items)
        unique: dict[int, Project] = {}
        for project in map(Project.from_api, items):
            unique.setdefault(project.id, project)
        out = list(unique.values())
        if total is not None and total != len(items):
            raise IncompleteListing(
                f"listing projects: Procore's Total says {plural(total, 'project')}, "
                f"the listing gave {len(items)}",
                projects=out,
            )
        return out

    async def me(self) -> str:
        """Who the access token belongs to (`person`)."""
        answer = await self.http.get_json(self.http.api_url("/rest/v1.0/me", []), what="asking who signed in")
        return person(answer.data)

    async def companies(self) -> list[Company]:
        """The companies the signed-in person can see."""
        url = self.http.api_url("/rest/v1.0/companies", [("per_page", "300")])
        out: list[Company] = []
        async for page in self._pages(url, "listing companies"):
            out.extend(Company.from_api(item) for item in page.items)
        return out

    async def albums(self, project_id: int) -> list[Album]:
        url = self.http.api_url(
            "/rest/v1.0/image_categories", [("project_id", str(project_id)), ("per_page", "300")]
        )
        out: list[Album] = []
        async for page in self._pages(url, f"listing albums of project {project_id}"):
            out.extend(Album.from_api(item) for item in page.items)
        return out

    async def images_page(self, query: ImageQuery, *, page: int, per_page: int) -> Page:
        """One page of `GET /rest/v1.0/images`; items stay raw for the caller to parse."""
        url = self.http.api_url("/rest/v1.0/images", query.params(page=page, per_page=per_page))
        what = f"listing photos of project {query.project_id} (page {page})"
        return self._page_of(await self.http.get_json(url, what=what), url, what)

    async def ids_page(self, query: ImageQuery, *, page: int, per_page: int) -> Page:
        """One page of the cheap `ids_only` view; `items` are validated integer ids."""
        ids_query = replace(query, serializer_view="ids_only", sort=None)
        url = self.http.api_url("/rest/v1.0/images", ids_query.params(page=page, per_page=per_page))
        what = f"listing photo ids of project {query.project_id} (page {page})"
        result = self._page_of(await self.http.get_json(url, what=what), url, what)
        for item in result.items:
            if isinstance(item, bool) or not isinstance(item, int) or as_int(item) is None:
                raise BadRecord(f"{what}: expected integer ids, got {item!r:.40}")
        return result

    async def image(self, project_id: int, image_id: int, *, once: bool = False) -> Photo:
        """One photo with a freshly signed `url`; `once`: a single attempt (the caller retries)."""
        url = self.http.api_url(f"/rest/v1.0/images/{image_id}", [("project_id", str(project_id))])
        answer = await self.http.get_json(url, what=f"fetching photo {image_id}", once=once)
        return Photo.from_api(answer.data)
