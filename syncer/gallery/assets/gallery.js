// A project's photos, from the data file the page loaded before this script (window.GALLERY).
//
// Written for 100,000 photos and for strings nobody checked: the grid draws only the rows in view
// (and a screen above and below), each thumbnail is loaded as its tile is drawn, and every value
// from Procore reaches the page through textContent or an attribute, never as markup.
"use strict";

(function () {
  const data = window.GALLERY;
  const count = document.getElementById("count");
  if (!data || !Array.isArray(data.photos)) {
    count.textContent = "This project's data file is missing: build the gallery again (syncer gallery).";
    return;
  }
  const F = {};
  data.fields.forEach(function (name, i) { F[name] = i; });
  const STARRED = 1, PRIVATE = 2;
  const TILE = 160, GAP = 8, HEAD = 44, PAD = 16, OVERSCAN = 800;
  const photos = data.photos;
  const grid = document.getElementById("grid");
  const spacer = document.getElementById("spacer");
  const controls = {
    search: document.getElementById("search"),
    album: document.getElementById("album"),
    location: document.getElementById("location"),
    from: document.getElementById("from"),
    to: document.getElementById("to"),
    starred: document.getElementById("starred"),
    group: document.getElementById("group"),
  };

  function name(table, ref) { return ref === null || ref === undefined ? "" : data[table][ref]; }
  // Photos without an album are in the folder of this name in the mirror; the page calls them so too.
  function albumOf(p) { return name("albums", p[F.album]) || data.unfiled; }
  // "1 photo", "2 photos": the page's one plural rule, as syncer/words.py is the syncer's.
  function plural(n, word) { return n.toLocaleString() + " " + word + (n === 1 ? "" : "s"); }
  function when(p) { return p[F.taken] || p[F.uploaded] || ""; }
  function trades(p) { return (p[F.trades] || []).map(function (t) { return data.trades[t]; }); }

  // What the search box looks in, lower-cased once.
  // Both sides in NFC, so "café" typed finds "café" stored decomposed.
  function fold(text) { return text.normalize("NFC").toLowerCase(); }
  const haystack = photos.map(function (p) {
    return fold([p[F.description] || "", name("places", p[F.location]), trades(p).join(" "),
      name("people", p[F.uploader]), p[F.name] || ""].join("\n"));
  });

  function fillSelect(select, table) {
    const counts = new Map();
    const column = table === "albums" ? F.album : F.location;
    photos.forEach(function (p) { if (p[column] !== null) counts.set(p[column], (counts.get(p[column]) || 0) + 1); });
    Array.from(counts.keys())
      .sort(function (a, b) { return data[table][a].localeCompare(data[table][b]); })
      .forEach(function (ref) {
        const option = document.createElement("option");
        option.value = String(ref);
        option.textContent = data[table][ref] + " (" + counts.get(ref).toLocaleString() + ")";
        select.append(option);
      });
  }
  fillSelect(controls.album, "albums");
  fillSelect(controls.location, "places");

  // -- filtering and grouping ----------------------------------------------------------------
  let order = [];  // indexes into photos, in display order
  let groups = []; // {label, start, end} over order

  function matches(i, words, album, place, from, to, starredOnly) {
    const p = photos[i];
    if (album !== null && p[F.album] !== album) return false;
    if (place !== null && p[F.location] !== place) return false;
    if (starredOnly && !(p[F.flags] & STARRED)) return false;
    if (from || to) {
      const day = when(p).slice(0, 10);
      if (!day || (from && day < from) || (to && day > to)) return false;
    }
    for (const word of words) if (!haystack[i].includes(word)) return false;
    return true;
  }

  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
  const rankOf = data.albums.map(function (_, ref) { return ref; })
    .sort(function (a, b) { return collator.compare(data.albums[a], data.albums[b]); })
    .reduce(function (ranks, ref, rank) { ranks[ref] = rank; return ranks; }, []);
  function albumRank(p) { return p[F.album] === null ? data.albums.length : rankOf[p[F.album]]; }

  function groupKey(p, by) {
    if (by === "album") return albumOf(p);
    const day = when(p);
    return day ? day.slice(0, by === "month" ? 7 : 10) : "No date";
  }

  function select() {
    const words = fold(controls.search.value).split(/\s+/).filter(Boolean);
    const album = controls.album.value === "" ? null : Number(controls.album.value);
    const place = controls.location.value === "" ? null : Number(controls.location.value);
    const chosen = [];
    for (let i = 0; i < photos.length; i++) {
      if (matches(i, words, album, place, controls.from.value, controls.to.value, controls.starred.checked)) {
        chosen.push(i);
      }
    }
    const by = controls.group.value;
    // Photos come newest first, so days and months are in order already; albums are sorted by
    // name (a stable sort keeps each album's photos newest first).
    if (by === "album") chosen.sort(function (a, b) { return albumRank(photos[a]) - albumRank(photos[b]); });
    order = chosen;
    groups = [];
    order.forEach(function (i, n) {
      const key = groupKey(photos[i], by);
      if (!groups.length || groups[groups.length - 1].label !== key) groups.push({ label: key, start: n, end: n });
      groups[groups.length - 1].end = n + 1;
    });
    const part = order.length === photos.length ? "" : order.length.toLocaleString() + " of ";
    count.textContent = part + plural(photos.length, "photo");
    layout();
  }

  // -- the virtual grid ------------------------------------------------------------------------
  let rows = [];       // {top, height, label} or {top, height, start, end}
  const drawn = new Map(); // row index -> element

  function firstInView() {
    const row = rows[firstRowBelow(grid.scrollTop)];
    return row === undefined ? undefined : row.start;
  }

  // keep: the place in `order` to keep in view (a resize), else the grid starts at the top.
  function layout(keep) {
    const width = grid.clientWidth - 2 * PAD;
    const columns = Math.max(1, Math.floor((width + GAP) / (TILE + GAP)));
    rows = [];
    let y = PAD;
    for (const g of groups) {
      rows.push({ top: y, height: HEAD, label: g.label, size: g.end - g.start, start: g.start });
      y += HEAD;
      for (let n = g.start; n < g.end; n += columns) {
        rows.push({ top: y, height: TILE + GAP, start: n, end: Math.min(n + columns, g.end) });
        y += TILE + GAP;
      }
    }
    spacer.style.height = (y + PAD) + "px";
    drawn.forEach(function (el) { el.remove(); });
    drawn.clear();
    if (keep !== undefined) {
      const row = rows.find(function (r) { return r.label === undefined && r.start <= keep && keep < r.end; });
      grid.scrollTop = row ? row.top - HEAD : 0;
    } else {
      grid.scrollTop = 0;
    }
    draw();
  }

  function firstRowBelow(y) {
    let lo = 0, hi = rows.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (rows[mid].top + rows[mid].height <= y) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  function draw() {
    const top = grid.scrollTop - OVERSCAN, bottom = grid.scrollTop + grid.clientHeight + OVERSCAN;
    const first = firstRowBelow(top);
    let last = first;
    while (last < rows.length && rows[last].top < bottom) last++;
    drawn.forEach(function (el, r) { if (r < first || r >= last) { el.remove(); drawn.delete(r); } });
    for (let r = first; r < last; r++) if (!drawn.has(r)) { const el = drawRow(rows[r]); drawn.set(r, el); spacer.append(el); }
  }

  function drawRow(row) {
    const el = document.createElement("div");
    el.style.top = row.top + "px";
    if (row.label !== undefined) {
      el.className = "group";
      const title = document.createElement("h2");
      title.textContent = row.label;
      const size = document.createElement("span");
      size.textContent = plural(row.size, "photo");
      el.append(title, size);
      return el;
    }
    el.className = "row";
    for (let n = row.start; n < row.end; n++) el.append(tile(order[n]));
    return el;
  }

  function thumbUrl(p) { return "thumbs/" + p[F.sha256].slice(0, 2) + "/" + p[F.sha256] + ".jpg"; }
  function fileUrl(p) { return "../" + p[F.path].split("/").map(encodeURIComponent).join("/"); }
  function extension(p) { const m = /\.([A-Za-z0-9]{1,8})$/.exec(p[F.path]); return m ? m[1].toUpperCase() : "FILE"; }

  function picture(p, big) {
    if (p[F.thumb]) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = p[F.name] || "";
      img.src = big && /\.(jpe?g|png|gif|webp|avif|bmp)$/i.test(p[F.path]) ? fileUrl(p) : thumbUrl(p);
      return img;
    }
    const placeholder = document.createElement("span");
    placeholder.className = "placeholder";
    placeholder.textContent = extension(p);
    return placeholder;
  }

  function tile(i) {
    const p = photos[i];
    const a = document.createElement("a");
    a.className = "tile";
    a.href = "#photo=" + p[F.id];
    a.addEventListener("click", function (e) {
      if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;  // a new tab keeps its own way
      e.preventDefault();
      history.pushState({ photo: p[F.id] }, "", "#photo=" + p[F.id]);  // Back closes it again
      route();
    });
    a.title = (p[F.name] || "") + (when(p) ? " · " + when(p).slice(0, 10) : "");
    a.append(picture(p, false));
    if (p[F.flags] & STARRED) { const s = document.createElement("span"); s.className = "star"; s.textContent = "★"; a.append(s); }
    if (p[F.deleted]) { const d = document.createElement("span"); d.className = "badge"; d.textContent = "deleted in Procore"; a.append(d); }
    return a;
  }

  // -- one photo -----------------------------------------------------------------------------
  const viewer = document.createElement("div");
  viewer.id = "viewer";
  viewer.hidden = true;
  viewer.setAttribute("role", "dialog");
  viewer.setAttribute("aria-modal", "true");
  document.body.append(viewer);
  const byId = new Map(photos.map(function (p, i) { return [String(p[F.id]), i]; }));
  const behind = [document.querySelector("header"), document.getElementById("filters"), grid];
  let current = null;

  function button(label, text, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.setAttribute("aria-label", label);
    b.textContent = text;
    b.addEventListener("click", action);
    return b;
  }

  function link(text, href) {
    const a = document.createElement("a");
    a.textContent = text;
    a.href = href;
    return a;
  }

  function utc(text) { return text ? text.replace("T", " ").replace("Z", " UTC") : ""; }
  function bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["bytes", "KB", "MB", "GB"];
    let v = n, u = 0;
    while (v >= 1000 && u < units.length - 1) { v /= 1000; u++; }
    return (u ? v.toFixed(1) : String(v)) + " " + units[u];
  }

  function facts(p) {
    const gps = p[F.lat] !== null && p[F.long] !== null ? p[F.lat].toFixed(6) + ", " + p[F.long].toFixed(6) : "";
    const size = p[F.width] && p[F.height] ? p[F.width] + " × " + p[F.height] : "";
    return [
      ["File name", p[F.name]], ["Description", p[F.description]], ["Album", albumOf(p)],
      ["Taken", utc(p[F.taken])], ["Uploaded", utc(p[F.uploaded])], ["Uploaded by", name("people", p[F.uploader])],
      ["Location", name("places", p[F.location])], ["Trades", trades(p).join(", ")],
      ["Starred", p[F.flags] & STARRED ? "yes" : "no"], ["Private", p[F.flags] & PRIVATE ? "yes" : "no"],
      ["Size", bytes(p[F.size])], ["Dimensions", size], ["GPS", gps],
      ["Deleted in Procore", utc(p[F.deleted])], ["Procore id", String(p[F.id])],
      ["Path in the mirror", p[F.path]], ["SHA-256", p[F.sha256]],
    ].filter(function (f) { return f[1]; });
  }

  function show(i) {
    current = i;
    const p = photos[i];
    viewer.replaceChildren();
    const figure = document.createElement("figure");
    figure.append(picture(p, true));
    const list = document.createElement("dl");
    for (const [term, value] of facts(p)) {
      const dt = document.createElement("dt"); dt.textContent = term;
      const dd = document.createElement("dd"); dd.textContent = value;
      list.append(dt, dd);
    }
    const links = document.createElement("p");
    links.className = "links";
    links.append(link("Open the original file", fileUrl(p)));
    if (/^https?:\/\//.test(data.project.link)) {
      const procore = link("The project's photos in Procore", data.project.link);
      procore.rel = "noopener noreferrer";
      procore.target = "_blank";
      links.append(procore);
    }
    const side = document.createElement("section");
    const title = document.createElement("h2");
    title.textContent = p[F.name] || "Photo " + p[F.id];
    side.append(title, list, links);
    const bar = document.createElement("nav");
    bar.append(button("Previous photo", "‹", function () { step(-1); }),
      button("Next photo", "›", function () { step(1); }),
      button("Close", "×", close));
    viewer.append(bar, figure, side);
    viewer.hidden = false;
    document.body.classList.add("viewing");
    for (const el of behind) el.inert = true;  // Tab stays in the photo view
    bar.lastChild.focus();
  }

  function step(by) {
    const at = order.indexOf(current);
    // A photo opened by its address may be one the filters hide: step into what they show.
    const next = at < 0 ? order[by > 0 ? 0 : order.length - 1] : order[at + by];
    if (next !== undefined) {
      history.replaceState(history.state, "", "#photo=" + photos[next][F.id]);
      route();
    }
  }

  function close() {
    if (history.state && history.state.photo) history.back();  // opened from a tile: undo that step
    else history.replaceState(null, "", location.pathname + location.search);
    hide();
  }

  function hide() {
    if (viewer.hidden) return;
    viewer.hidden = true;
    viewer.replaceChildren();
    document.body.classList.remove("viewing");
    for (const el of behind) el.inert = false;
    const shown = current === null ? null : spacer.querySelector('a.tile[href="#photo=' + photos[current][F.id] + '"]');
    current = null;
    if (shown) shown.focus();
  }

  function route() {
    const m = /^#photo=(\d+)$/.exec(location.hash);
    if (m && byId.has(m[1])) show(byId.get(m[1])); else hide();
  }

  // -- wiring ----------------------------------------------------------------------------------
  let pending = 0;
  function later() { clearTimeout(pending); pending = setTimeout(select, 150); }
  controls.search.addEventListener("input", later);
  for (const key of ["album", "location", "from", "to", "starred", "group"]) controls[key].addEventListener("change", select);
  document.getElementById("filters").addEventListener("reset", function () { setTimeout(select, 0); });
  document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });
  let frame = 0;
  grid.addEventListener("scroll", function () { if (!frame) frame = requestAnimationFrame(function () { frame = 0; draw(); }); });
  let width = 0;
  new ResizeObserver(function () {
    if (grid.clientWidth === width) { draw(); return; }  // taller or shorter: the rows stand
    const keep = width ? firstInView() : undefined;
    width = grid.clientWidth;
    layout(keep);
  }).observe(grid);
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  document.addEventListener("keydown", function (e) {
    if (!viewer.hidden) {
      if (e.key === "Escape") close();
      else if (e.key === "ArrowLeft") step(-1);
      else if (e.key === "ArrowRight") step(1);
    } else if (e.key === "/" && document.activeElement !== controls.search) {
      e.preventDefault();
      controls.search.focus();
    }
  });
  select();
  route();
  document.body.dataset.ready = "true";
})();
