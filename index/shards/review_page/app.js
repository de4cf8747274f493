/* review-clips: the page's logic. Plain JavaScript, no library, no build step.

   The data comes from data.js (window.REVIEW, written by review-clips): columns of n values each (id, caption,
   flags, src, num[col], cats[col], ...), so 10,000 clips filter in a loop over arrays, and only one page of tiles
   is in the document at a time; a tile's preview loads when it scrolls into view. Every value from the data goes
   into the page as text (textContent), never as HTML. */
"use strict";
(function () {
  const R = window.REVIEW;
  const $ = (id) => document.getElementById(id);
  if (!R) {
    document.body.textContent = "data.js did not load: write the page again with review-clips";
    return;
  }
  const N = R.n;
  const nums = R.numeric.map((c) => c.name);
  const dur = R.num.duration || null;
  const flagsOf = R.flags.map((s) => (s ? s.split(",") : []));
  const hay = [];
  for (let i = 0; i < N; i++) {
    hay.push(((R.caption ? R.caption[i] : "") + "\n" + R.id[i] + "\n" + (R.src ? R.src[i] : "")).toLowerCase());
  }
  const S = { text: "", sort: "", desc: true, showDropped: false, flags: {}, cats: {}, lo: {}, hi: {},
              page: 0, size: R.page_size || 48, dpage: 0 };
  const GROUPS_PER_PAGE = 20;

  // ------------------------------------------------------------ small helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "\u2013";
    const a = Math.abs(v);
    if (a >= 1000 || Number.isInteger(v)) return v.toFixed(0);
    if (a >= 100) return v.toFixed(1);
    return String(+v.toPrecision(3));
  }
  function fmtTime(sec) {
    return sec < 3600 ? (sec / 60).toFixed(1) + " min" : (sec / 3600).toFixed(2) + " h";
  }
  function seconds(i) {
    const d = dur ? dur[i] : null;
    return d > 0 ? d : 0;
  }
  function basename(p) {
    return p ? p.split(/[\\/]/).pop() : "";
  }
  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }
  function pyName(c) {
    return /^[A-Za-z_][A-Za-z0-9_]*$/.test(c) ? c : "`" + c + "`";
  }

  // ------------------------------------------------------------ column ranges and histograms (of the clip set)
  const range = {}, hist = {}, BINS = 24;
  const isInt = {};
  for (const c of nums) {
    let lo = Infinity, hi = -Infinity, ints = true;
    for (const v of R.num[c]) {
      if (v === null) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
      if (!Number.isInteger(v)) ints = false;
    }
    range[c] = lo <= hi ? [lo, hi] : [0, 0];
    isInt[c] = ints;
    const h = new Array(BINS).fill(0);
    const [a, b] = range[c];
    R.num[c].forEach((v, i) => {
      if (v === null || R.dropped[i]) return;
      h[b > a ? Math.min(BINS - 1, Math.floor(((v - a) / (b - a)) * BINS)) : 0]++;
    });
    hist[c] = h;
  }
  let setCount = 0, setSec = 0;
  for (let i = 0; i < N; i++) if (!R.dropped[i]) { setCount++; setSec += seconds(i); }

  // ------------------------------------------------------------ filtering
  function baseOk(i) {
    if (!S.showDropped && R.dropped[i]) return false;
    if (S.text && hay[i].indexOf(S.text) < 0) return false;
    for (const f in S.flags) {
      if ((S.flags[f] === "yes") !== flagsOf[i].includes(f)) return false;
    }
    for (const c in S.cats) {
      if (R.cats[c][i] !== S.cats[c]) return false;
    }
    return true;
  }
  function active(c) {
    return S.lo[c] !== undefined || S.hi[c] !== undefined;
  }
  function numOk(c, i) {
    const v = R.num[c][i];
    if (v === null) return false;
    return !(S.lo[c] !== undefined && v < S.lo[c]) && !(S.hi[c] !== undefined && v > S.hi[c]);
  }

  let shown = [];
  function update() {
    const act = nums.filter(active);
    const alone = {};
    for (const c of act) alone[c] = [0, 0];
    let baseN = 0, baseSec = 0, sec = 0;
    shown = [];
    for (let i = 0; i < N; i++) {
      if (!baseOk(i)) continue;
      const s = seconds(i);
      baseN++;
      baseSec += s;
      let all = true;
      for (const c of act) {
        if (numOk(c, i)) { alone[c][0]++; alone[c][1] += s; } else all = false;
      }
      if (all) { shown.push(i); sec += s; }
    }
    sortShown();
    $("shown-count").textContent = shown.length;
    $("shown-hours").textContent = fmtTime(sec);
    document.body.dataset.shown = shown.length;
    for (const d of document.querySelectorAll(".thr")) {
      const c = d.dataset.col, on = active(c);
      d.classList.toggle("active", on);
      d.querySelector(".remain").textContent = on
        ? "alone: " + alone[c][0] + " clips, " + fmtTime(alone[c][1]) + " remain"
        : "no threshold: " + baseN + " clips, " + fmtTime(baseSec);
      drawHist(d.querySelector("canvas"), c);
    }
    const q = [];
    for (const c of act) {
      const name = c === "duration" && !R.num.end_sec ? "(end_sec - start_sec)" : pyName(c);
      if (S.lo[c] !== undefined) q.push(name + " >= " + S.lo[c]);
      if (S.hi[c] !== undefined) q.push(name + " <= " + S.hi[c]);
    }
    for (const c in S.cats) q.push(pyName(c) + " == " + JSON.stringify(S.cats[c]));
    $("query").textContent = q.length ? q.join(" and ") : "(no thresholds)";
    renderPage();
  }

  function sortShown() {
    const k = S.sort, dir = S.desc ? -1 : 1;
    if (!k) {
      if (S.desc) shown.reverse();
      return;
    }
    if (k === "caption length" || k === "source") {
      const key = k === "source" ? (i) => (R.src ? R.src[i] : "") + "\u0000" + String(1e9 + (R.t0 ? R.t0[i] : 0))
        : (i) => (R.caption ? R.caption[i].length : 0);
      shown.sort((a, b) => {
        const x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * dir || a - b;
      });
      return;
    }
    const col = R.num[k];
    shown.sort((a, b) => {
      const x = col[a], y = col[b];
      if (x === null) return y === null ? a - b : 1; // missing values last either way
      if (y === null) return -1;
      return (x - y) * dir || a - b;
    });
  }

  // ------------------------------------------------------------ tiles
  const lazy = "IntersectionObserver" in window ? new IntersectionObserver((entries) => {
    for (const e of entries) {
      if (e.isIntersecting) {
        e.target.src = e.target.dataset.src;
        lazy.unobserve(e.target);
      }
    }
  }, { rootMargin: "400px" }) : null;

  function tile(i) {
    const t = el("div", "tile");
    t.dataset.id = R.id[i];
    if (R.dropped[i]) t.classList.add("dropped");
    const pv = el("div", "pv");
    if (R.pv[i]) {
      const img = el("img");
      img.alt = "preview of " + R.id[i];
      img.decoding = "async";
      img.dataset.src = "previews/" + R.pv[i] + ".webp";
      if (lazy) lazy.observe(img); else img.src = img.dataset.src;
      pv.append(img);
    } else {
      pv.textContent = R.perr[i] ? "no preview: " + R.perr[i] : "no preview";
    }
    const body = el("div", "body");
    const text = R.caption ? R.caption[i] : "";
    const cap = el("div", text ? "cap" : "cap none", text || "no caption");
    cap.title = "click to show it all";
    cap.onclick = () => cap.classList.toggle("open");
    const chips = el("div", "chips");
    if (R.dup[i] >= 0) {
      if (R.keep[i]) chips.append(el("span", "chip keep", "kept, group " + R.dup[i]));
      else {
        const sim = R.sim[i] !== null ? ", sim " + R.sim[i].toFixed(3) : "";
        chips.append(el("span", "chip drop", "dropped duplicate" + sim));
      }
      if (R.extra[i] && R.keep[i]) chips.append(el("span", "chip drop", "not in this set"));
    } else if (R.dropped[i]) {
      chips.append(el("span", "chip drop", "dropped"));
    }
    for (const f of flagsOf[i]) chips.append(el("span", "chip", f));
    const scores = el("div", "scores");
    for (const c of R.numeric) {
      const v = R.num[c.name][i];
      if (c.group !== "score" || v === null) continue;
      scores.append(el("span", "", c.name), el("span", "", fmt(v)));
    }
    const p = (c) => (R.num[c] ? R.num[c][i] : null);
    const props = [p("width") !== null && p("height") !== null ? p("width") + "\u00d7" + p("height") : "",
                   p("fps") !== null ? fmt(p("fps")) + " fps" : "", dur ? fmt(dur[i]) + " s" : "",
                   p("num_frames") !== null ? p("num_frames") + " frames" : ""].filter(Boolean).join(" \u00b7 ");
    const src = el("div", "src");
    const path = R.src ? R.src[i] : "";
    const span = R.t0 && R.t1 && R.t0[i] !== null ? " " + fmt(R.t0[i]) + "\u2013" + fmt(R.t1[i]) + " s" : "";
    if (path.startsWith("/")) {
      const a = el("a", "", basename(path));
      a.href = "file://" + encodeURI(path).replace(/#/g, "%23").replace(/\?/g, "%3F") +
        (span ? "#t=" + R.t0[i] + "," + R.t1[i] : "");
      a.title = path;
      src.append(a);
    } else {
      src.append(el("span", "", basename(path)));
      src.title = path;
    }
    src.append(span + (R.shard && R.shard[i] ? " \u00b7 " + R.shard[i] : ""));
    body.append(cap, chips, scores, el("div", "props", props), src, el("div", "id", R.id[i]));
    t.append(pv, body);
    return t;
  }

  function renderPage() {
    const pages = Math.max(1, Math.ceil(shown.length / S.size));
    S.page = Math.min(Math.max(0, S.page), pages - 1);
    const a = S.page * S.size, slice = shown.slice(a, a + S.size);
    if (lazy) lazy.disconnect();
    const grid = $("grid");
    grid.replaceChildren(...slice.map(tile));
    if (!slice.length) grid.append(el("p", "empty", "no clip passes these filters"));
    for (const p of document.querySelectorAll(".pager")) {
      p.querySelector(".where").textContent = "page " + (S.page + 1) + " of " + pages +
        (slice.length ? " (" + (a + 1) + "\u2013" + (a + slice.length) + ")" : "");
      p.querySelector(".prev").disabled = S.page === 0;
      p.querySelector(".next").disabled = S.page >= pages - 1;
    }
  }

  // ------------------------------------------------------------ controls
  function drawHist(cv, c) {
    const ctx = cv.getContext("2d"), h = hist[c], max = Math.max(1, ...h), [a, b] = range[c];
    const w = cv.width / BINS;
    ctx.clearRect(0, 0, cv.width, cv.height);
    h.forEach((n, k) => {
      const x0 = a + ((b - a) * k) / BINS, x1 = a + ((b - a) * (k + 1)) / BINS;
      const inside = !(S.lo[c] !== undefined && x1 <= S.lo[c]) && !(S.hi[c] !== undefined && x0 > S.hi[c]);
      ctx.fillStyle = inside ? "#2f6fdf" : "#c9c9c2";
      const bh = n ? Math.max(1, (n / max) * cv.height) : 0;
      ctx.fillRect(k * w + 0.5, cv.height - bh, w - 1, bh);
    });
  }

  function buildThresholds() {
    const box = $("thresholds");
    let group = null;
    for (const { name: c, group: g } of R.numeric) {
      if (g !== group) {
        group = g;
        box.append(el("h4", "", g === "score" ? "scores" : "clip"));
      }
      const [lo, hi] = range[c];
      const step = isInt[c] ? Math.max(1, Math.round((hi - lo) / 200)) : (hi - lo) / 200 || 1;
      const d = el("div", "thr");
      d.dataset.col = c;
      const name = el("div", "name", c);
      name.append(el("span", "", fmt(lo) + " \u2013 " + fmt(hi)));
      const cv = el("canvas");
      cv.width = 276;
      cv.height = 22;
      const bounds = el("div", "bounds");
      const mk = (end) => {
        const num = el("input", end + "-num");
        num.type = "number";
        num.step = "any";
        num.placeholder = fmt(end === "lo" ? lo : hi);
        num.title = end === "lo" ? "keep clips with " + c + " at least this" : "keep clips with " + c + " at most this";
        const r = el("input", end + "-range");
        Object.assign(r, { type: "range", min: lo, max: hi, step: step, value: end === "lo" ? lo : hi });
        r.title = num.title;
        const store = end === "lo" ? S.lo : S.hi;
        num.addEventListener("input", () => {
          const v = num.value === "" ? NaN : Number(num.value);
          if (Number.isFinite(v)) {
            store[c] = v;
            r.value = v;
          } else {
            delete store[c];
            r.value = end === "lo" ? lo : hi;
          }
          S.page = 0;
          update();
        });
        r.addEventListener("input", () => {
          const v = Number(r.value);
          const open = end === "lo" ? v <= lo : v >= hi;
          if (open) { delete store[c]; num.value = ""; } else { store[c] = v; num.value = String(+v.toPrecision(6)); }
          S.page = 0;
          update();
        });
        return [num, r];
      };
      const [loNum, loR] = mk("lo"), [hiNum, hiR] = mk("hi");
      bounds.append("\u2265 ", loNum, " \u2264 ", hiNum);
      d.append(name, cv, bounds, loR, hiR, el("div", "remain"));
      box.append(d);
    }
    if (!R.numeric.length) box.append(el("p", "empty", "no numeric column in this data"));
  }

  function buildFlags() {
    const counts = {};
    flagsOf.forEach((fs, i) => { if (!R.dropped[i]) for (const f of fs) counts[f] = (counts[f] || 0) + 1; });
    const box = $("flags");
    const names = Object.keys(counts).sort();
    if (!names.length) box.append(el("p", "empty", "no flags in this data"));
    for (const f of names) {
      const lab = el("label", "", f + " (" + counts[f] + ")");
      const sel = el("select");
      sel.dataset.flag = f;
      for (const [v, t] of [["any", "any"], ["yes", "only with it"], ["no", "only without it"]]) {
        const o = el("option", "", t);
        o.value = v;
        sel.append(o);
      }
      sel.addEventListener("change", () => {
        if (sel.value === "any") delete S.flags[f]; else S.flags[f] = sel.value;
        S.page = 0;
        update();
      });
      lab.append(sel);
      box.append(lab);
    }
  }

  function buildCats() {
    const box = $("cats");
    for (const c in R.cats) {
      const counts = {};
      R.cats[c].forEach((v, i) => { if (!R.dropped[i]) counts[v] = (counts[v] || 0) + 1; });
      box.append(el("h3", "", c));
      const sel = el("select");
      sel.dataset.cat = c;
      const all = el("option", "", "all");
      all.value = "";
      sel.append(all);
      for (const v of Object.keys(counts).sort()) {
        const o = el("option", "", (v || "(empty)") + " (" + counts[v] + ")");
        o.value = v;
        sel.append(o);
      }
      sel.addEventListener("change", () => {
        if (sel.value === "") delete S.cats[c]; else S.cats[c] = sel.value;
        S.page = 0;
        update();
      });
      const lab = el("label", "", "value");
      lab.append(sel);
      box.append(lab);
    }
  }

  function buildSort() {
    const sel = $("sort");
    for (const [v, t] of [["", "input order"], ...nums.map((c) => [c, c]), ["caption length", "caption length"],
                          ["source", "source and time"]]) {
      const o = el("option", "", t);
      o.value = v;
      sel.append(o);
    }
    sel.addEventListener("change", () => {
      S.sort = sel.value;
      S.desc = S.sort !== "" && S.sort !== "source"; // scores: the highest first
      syncDir();
      S.page = 0;
      update();
    });
    const syncDir = () => { $("sort-dir").textContent = S.desc ? "descending" : "ascending"; };
    S.desc = false;
    syncDir();
    $("sort-dir").addEventListener("click", () => { S.desc = !S.desc; syncDir(); S.page = 0; update(); });
    const ps = $("page-size");
    for (const n of [...new Set([24, 48, 96, 192, S.size])].sort((a, b) => a - b)) {
      const o = el("option", "", n + " per page");
      o.value = n;
      ps.append(o);
    }
    ps.value = String(S.size);
    ps.addEventListener("change", () => { S.size = Number(ps.value); S.page = 0; renderPage(); });
  }

  // ------------------------------------------------------------ duplicates
  const groups = new Map();
  R.dup.forEach((g, i) => { if (g >= 0) (groups.get(g) || groups.set(g, []).get(g)).push(i); });
  const glist = [...groups.entries()].filter(([, m]) => m.length > 1).sort((a, b) => a[0] - b[0]);
  for (const [, m] of glist) m.sort((a, b) => (R.keep[b] - R.keep[a]) || ((R.sim[b] || 0) - (R.sim[a] || 0)) || a - b);
  const droppedDups = glist.reduce((n, [, m]) => n + m.filter((i) => !R.keep[i]).length, 0);

  function renderDups() {
    const pages = Math.max(1, Math.ceil(glist.length / GROUPS_PER_PAGE));
    S.dpage = Math.min(Math.max(0, S.dpage), pages - 1);
    $("dups-status").textContent = glist.length + " duplicate groups, " + droppedDups +
      " clips dropped as duplicates; the clip kept has a green border" + (R.index ? " (index: " + R.index + ")" : "");
    if (lazy) lazy.disconnect();
    const box = $("groups");
    box.replaceChildren();
    for (const [g, m] of glist.slice(S.dpage * GROUPS_PER_PAGE, (S.dpage + 1) * GROUPS_PER_PAGE)) {
      const d = el("div", "group");
      d.dataset.group = g;
      d.append(el("h4", "", "group " + g + ": " + m.length + " clips"));
      const row = el("div", "row-tiles");
      for (const i of m) {
        const t = tile(i);
        if (R.keep[i]) t.classList.add("kept");
        row.append(t);
      }
      d.append(row);
      box.append(d);
    }
    if (!glist.length) box.append(el("p", "empty", R.index ? "no duplicate groups" :
      "no dedup index: run index-clips, then review-clips with --index INDEX_DIR"));
    const p = document.querySelector(".dpager");
    p.querySelector(".where").textContent = "page " + (S.dpage + 1) + " of " + pages;
    p.querySelector(".prev").disabled = S.dpage === 0;
    p.querySelector(".next").disabled = S.dpage >= pages - 1;
  }

  // ------------------------------------------------------------ failures
  const F = R.failures || [];
  function renderFails() {
    const q = $("fail-search").value.toLowerCase();
    const rows = F.filter((f) => !q || (f.path + "\n" + f.reason + "\n" + f.stage).toLowerCase().includes(q));
    const kinds = {};
    for (const f of rows) {
      const reason = String(f.reason).replace(/^clip \S+: /, "").replace(/\d+(\.\d+)?/g, "N");
      const k = (f.stage || f.from) + ": " + reason.slice(0, 80);
      kinds[k] = (kinds[k] || 0) + 1;
    }
    const sum = $("fail-summary");
    sum.replaceChildren(...Object.entries(kinds).sort((a, b) => b[1] - a[1]).slice(0, 12)
      .map(([k, n]) => el("span", "", n + " \u00d7 " + k)));
    $("fail-status").textContent = plural(rows.length, "failure") +
      (rows.length > 500 ? " (the first 500 shown; filter to narrow)" : "");
    const body = document.querySelector("#fail-table tbody");
    body.replaceChildren(...rows.slice(0, 500).map((f) => {
      const tr = el("tr");
      for (const v of [f.from, f.stage, f.path, f.reason]) tr.append(el("td", "", v || ""));
      return tr;
    }));
  }

  // ------------------------------------------------------------ wiring
  function show(view) {
    for (const b of document.querySelectorAll(".tab")) b.classList.toggle("on", b.dataset.view === view);
    for (const v of ["clips", "dups", "fails"]) $("view-" + v).hidden = v !== view;
    if (view === "dups") renderDups();
    else if (view === "fails") renderFails();
    else renderPage();
  }
  document.title = R.title;
  $("title").textContent = R.title;
  $("summary").textContent = plural(setCount, "clip") + ", " + fmtTime(setSec) + " \u00b7 " +
    plural(glist.length, "duplicate group") + " \u00b7 " + plural(F.length, "failure") + " \u00b7 " +
    R.kind + ": " + R.input;
  $("total-count").textContent = setCount;
  $("total-hours").textContent = fmtTime(setSec);
  $("tab-clips").textContent = "Clips (" + setCount + ")";
  $("tab-dups").textContent = "Duplicates (" + glist.length + ")";
  $("tab-fails").textContent = "Failures (" + F.length + ")";
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => show(b.dataset.view));
  $("search").addEventListener("input", (e) => { S.text = e.target.value.trim().toLowerCase(); S.page = 0; update(); });
  $("show-dropped").addEventListener("change", (e) => { S.showDropped = e.target.checked; S.page = 0; update(); });
  for (const p of document.querySelectorAll(".pager")) {
    p.querySelector(".prev").addEventListener("click", () => { S.page--; renderPage(); window.scrollTo(0, 0); });
    p.querySelector(".next").addEventListener("click", () => { S.page++; renderPage(); window.scrollTo(0, 0); });
  }
  const dp = document.querySelector(".dpager");
  dp.querySelector(".prev").addEventListener("click", () => { S.dpage--; renderDups(); });
  dp.querySelector(".next").addEventListener("click", () => { S.dpage++; renderDups(); });
  $("fail-search").addEventListener("input", renderFails);
  $("reset").addEventListener("click", () => {
    Object.assign(S, { text: "", flags: {}, cats: {}, lo: {}, hi: {}, page: 0, showDropped: false });
    $("search").value = "";
    $("show-dropped").checked = false;
    for (const s of document.querySelectorAll("#flags select, #cats select")) s.selectedIndex = 0;
    for (const d of document.querySelectorAll(".thr")) {
      const [lo, hi] = range[d.dataset.col];
      d.querySelector(".lo-num").value = d.querySelector(".hi-num").value = "";
      d.querySelector(".lo-range").value = lo;
      d.querySelector(".hi-range").value = hi;
    }
    update();
  });
  buildSort();
  buildFlags();
  buildCats();
  buildThresholds();
  update();
  document.body.dataset.ready = "1";
})();
