// The cell page: karyogram (render.py's layout) + spread with mask outlines, edits with undo/redo.
// The server owns every figure: after each edit the page sends the whole edit list to
// /api/cell/<stem>/state and draws what comes back (labels, pairs, flags, ISCN, counts, sanity).
(function () {
  "use strict";
  const STEM = document.getElementById("stem").textContent;
  const API = "/api/cell/" + encodeURIComponent(STEM);
  const FLAG_WORDS = JSON.parse(document.getElementById("flag-words").textContent);
  const $ = (id) => document.getElementById(id);
  const SVGNS = "http://www.w3.org/2000/svg";

  let cell = null;          // GET /api/cell payload
  let state = null;         // current summary from the server
  let groups = [];          // undo stack: each entry a list of edits made by one action
  let redo = [];
  let savedCount = 0;       // edits (flattened) that the saved revision holds
  let savedSig = "";
  let revision = 0;
  let sel = -1;             // selected chromosome id
  let swapFrom = -1;
  let typed = "";           // digits typed for "move to class"
  let busy = Promise.resolve();

  const flat = () => groups.flat();
  const sig = (edits) => JSON.stringify(edits.map((e) => [e.op, e.id, e.ids, e.before, e.after]));
  const dirty = () => sig(flat()) !== savedSig;

  const { message, request } = window.KaryoReview;  // common.js

  // ------------------------------------------------------------------ edits
  function stamp(e) { e.at = new Date().toISOString(); return e; }

  function moveEdits(i, k) {
    const out = [];
    if (state.debris[i]) out.push(stamp({ op: "debris", id: i, before: true, after: false }));
    const cur = state.labels[i] === 0 && state.debris[i] ? rawLabel(i) : state.labels[i];
    if (cur !== k) out.push(stamp({ op: "move", id: i, before: cur, after: k }));
    return out;
  }

  // the label an instance carries under its debris mark (the server's effective label is 0)
  function rawLabel(i) { return state.raw_labels[i]; }

  // a chromosome's fixed facts: the pipeline's instances from the cell, the ones edits added from the state
  function info(i) { return i < cell.chromosomes.length ? cell.chromosomes[i] : state.added[i - cell.chromosomes.length]; }
  // ids of the instances present (not replaced by a segmentation edit)
  function present() { const out = []; state.alive.forEach((a, i) => { if (a) out.push(i); }); return out; }
  function cropUrl(i) {
    return i < cell.chromosomes.length ? "/cell/" + encodeURIComponent(STEM) + "/crop/" + i + ".png" : info(i).png;
  }

  async function commit(edits, what) {
    if (!edits.length) return;
    groups.push(edits);
    const backup = redo;
    redo = [];
    try {
      await refresh();
      message(what, "ok");
    } catch (err) {
      groups.pop();
      redo = backup;
      message("Not applied: " + err.message, "error");
      await refresh().catch(() => {});
    }
  }

  function act(fn) { busy = busy.then(fn).catch((e) => message(e.message, "error")); return busy; }

  function moveTo(i, k) {
    if (i < 0) return;
    const what = "chromosome " + i + " \u2192 " + cell.names[k];
    return act(() => commit(moveEdits(i, k), what));
  }
  // each action reads the state when its turn comes (keys pressed quickly queue up in act)
  function toggleDebris(i) {
    if (i < 0) return;
    return act(() => {
      const d = state.debris[i];
      return commit([stamp({ op: "debris", id: i, before: d, after: !d })],
        "chromosome " + i + (d ? " restored" : " marked not a chromosome"));
    });
  }
  function flip(i) {
    if (i < 0) return;
    return act(() => {
      const f = state.flipped[i];
      return commit([stamp({ op: "flip", id: i, before: f, after: !f })], "chromosome " + i + " turned");
    });
  }
  function swap(i, j) {
    if (i < 0 || j < 0 || i === j) return;
    return act(() => {
      if (state.debris[i] || state.debris[j]) { message("Restore a 'not a chromosome' before swapping it", "error"); return; }
      const a = state.labels[i], b = state.labels[j];
      return commit([stamp({ op: "swap", ids: [i, j], before: [a, b], after: [b, a] })],
        "swapped " + i + " (" + cell.names[a] + ") and " + j + " (" + cell.names[b] + ")");
    });
  }
  function undo() {
    return act(async () => {
      if (!groups.length) { message("Nothing to undo"); return; }
      redo.push(groups.pop());
      await refresh();
      message("Undone", "ok");
    });
  }
  function redoOne() {
    return act(async () => {
      if (!redo.length) { message("Nothing to redo"); return; }
      groups.push(redo.pop());
      await refresh();
      message("Redone", "ok");
    });
  }

  async function refresh() {
    state = await request(API + "/state", { edits: flat() });
    draw();
  }

  // ------------------------------------------------------------------ saving
  // an in-page question (the confirm dialog); resolves to null (cancelled) or the note typed
  function ask(text, yes, withNote) {
    const dlg = $("confirm");
    $("confirm-text").textContent = text;
    $("confirm-yes").textContent = yes;
    $("confirm-note-row").hidden = !withNote;
    $("confirm-note").value = "";
    return new Promise((resolve) => {
      const done = (v) => { dlg.onclose = null; if (dlg.open) dlg.close(); resolve(v); };
      $("confirm-yes").onclick = () => done($("confirm-note").value.trim());
      $("confirm-no").onclick = () => done(null);
      dlg.onclose = () => done(null);
      dlg.showModal();
      (withNote ? $("confirm-note") : $("confirm-yes")).focus();
    });
  }

  const DONE_WORDS = { saved: "Saved", accepted: "Accepted and saved", unanalysable: "Marked unanalysable and saved" };

  // status: "saved" (a draft), "accepted" (asks first when the cell has doubts) or "unanalysable" (asks why)
  function save(status) {
    return act(async () => {
      const reviewer = $("reviewer").value.trim();
      if (!reviewer) { message("Type your name in 'reviewer' first", "error"); $("reviewer").focus(); return; }
      sessionStorage.setItem("karyo-reviewer", reviewer);
      let confirmed = false, note = "";
      if (status === "accepted" && state.accept_doubts.length) {
        const a = await ask("Accept this cell although " + state.accept_doubts.join(" and ") + "?", "Accept anyway", false);
        if (a === null) { message("Not accepted"); return; }
        confirmed = true;
      }
      if (status === "unanalysable") {
        const a = await ask("Mark this cell unanalysable? It stays out of the training data.", "Unanalysable", true);
        if (a === null) { message("Not marked"); return; }
        note = a;
      }
      message("Saving\u2026");
      try {
        const edits = flat();
        const res = await request(API + "/save", {
          edits: edits, base_revision: revision, reviewer: reviewer, status: status, confirmed: confirmed, note: note,
        });
        revision = res.revision;
        savedSig = sig(edits);
        savedCount = edits.length;
        cell.review = { revision: res.revision, reviewer: reviewer, saved_at: res.saved_at, status: res.status };
        state = res.state;
        draw();
        const f = res.files;
        const m = $("message");
        m.className = "ok";
        m.textContent = DONE_WORDS[res.status] + " (revision " + res.revision + "): ";
        for (const [k, label] of [["reviewed_json", "JSON"], ["karyogram_png", "karyogram"], ["karyogram_pdf", "PDF"], ["coco", "training file"]]) {
          const a = document.createElement("a");
          a.href = "/files/" + f[k]; a.textContent = label; a.target = "_blank";
          m.append(a, " ");
        }
        if (state.n_unassigned && res.status !== "unanalysable") {
          m.append("\u2014 " + state.n_unassigned + " still unassigned: in the training file as class-unknown " +
            "'chromosome' (the detector learns them, the classifier skips them)");
        }
      } catch (err) {
        message((err.status === 409 ? "Conflict: " : "Not saved: ") + err.message, "error");
      }
    });
  }

  // ------------------------------------------------------------------ drawing
  const Z = () => cell.zoom;

  function cropBox(i) {
    const c = info(i).crop;
    const cen = state.flipped[i] ? c.h - 1 - c.cen : c.cen;
    return { w: c.w, h: c.h, cen: cen };
  }

  function chromEl(i) {
    const c = info(i);
    const b = cropBox(i);
    const wrap = document.createElement("div");
    wrap.className = "chrom";
    wrap.dataset.id = i;
    const flags = state.flags[i].filter((f) => f !== "unassigned" && f !== cell.not_chromosome);
    if (flags.length) wrap.classList.add("flagged");
    if (i === sel) wrap.classList.add("selected");
    if (i === swapFrom) wrap.classList.add("swap-from");
    wrap.title = "#" + i + " " + cell.names[state.labels[i]] + (flags.length ? " \u2014 " + flags.map((f) => FLAG_WORDS[f] || f).join(", ") : "");
    const img = document.createElement("img");
    img.src = cropUrl(i);
    img.width = Math.max(1, Math.round(b.w * Z()));
    img.height = Math.max(1, Math.round(b.h * Z()));
    img.draggable = false;
    if (state.flipped[i]) img.classList.add("flipped");
    const mark = document.createElement("span");
    mark.className = "mark";
    mark.textContent = flags.map((f) => ({ low_confidence: "?", unpaired: "u", extra: "+", suspected_overlap: "ov", suspected_split: "sp" })[f] || "!").join(" ");
    wrap.append(mark, img);
    c.el = wrap;
    return wrap;
  }

  function drawKaryogram() {
    const k = $("karyogram");
    k.textContent = "";
    state.slots.forEach((row, r) => {
      const rowEl = document.createElement("div");
      rowEl.className = "krow";
      const members = row.flatMap(([, m]) => m);
      const above = Math.max(20, ...members.map((i) => cropBox(i).cen));
      const below = Math.max(20, ...members.map((i) => cropBox(i).h - cropBox(i).cen));
      row.forEach(([cls, m], j) => {
        const slot = document.createElement("div");
        slot.className = "slot drop";
        slot.dataset.class = cls;
        slot.style.flexBasis = (100 / row.length) + "%";
        const box = document.createElement("div");
        box.className = "members";
        box.style.height = Math.round((above + below) * Z() + 14) + "px";
        for (const i of m) {
          const el = chromEl(i);
          el.style.marginTop = Math.round((above - cropBox(i).cen) * Z() + 12) + "px";
          box.append(el);
        }
        const base = document.createElement("div");
        base.className = "baseline";
        const name = document.createElement("div");
        name.className = "cname";
        name.textContent = cell.layout[r][j].name;
        const bar = document.createElement("div");
        bar.className = "cbar";
        bar.style.background = cell.layout[r][j].colour;
        slot.append(box, base, name, bar);
        rowEl.append(slot);
      });
      k.append(rowEl);
    });
    for (const [id, pred] of [["unassigned", (i) => state.labels[i] === 0 && !state.debris[i]], ["debris", (i) => state.debris[i]]]) {
      const box = $(id).querySelector(".members");
      box.textContent = "";
      present().forEach((i) => { if (pred(i)) box.append(chromEl(i)); });
      $(id).querySelector("h3").textContent = (id === "debris" ? "not a chromosome" : "unassigned") + " (" + box.children.length + ")";
    }
  }

  function drawSpread() {
    const svg = $("spread-svg");
    svg.textContent = "";
    present().forEach((i) => {
      const c = info(i);
      const g = document.createElementNS(SVGNS, "g");
      g.classList.add("outline");
      g.dataset.id = i;
      const k = state.labels[i];
      const flags = state.flags[i].filter((f) => f !== "unassigned" && f !== cell.not_chromosome);
      if (state.debris[i]) g.classList.add("debris");
      if (flags.length) g.classList.add("flagged");
      if (i === sel) g.classList.add("selected");
      if (i === swapFrom) g.classList.add("swap-from");
      g.style.setProperty("--c", cell.colours[k]);
      let sx = 0, sy = 0, n = 0;
      for (const poly of c.outline) {
        const p = document.createElementNS(SVGNS, "polygon");
        p.setAttribute("points", poly.map((q) => q[0] + "," + q[1]).join(" "));
        g.append(p);
        for (const q of poly) { sx += q[0]; sy += q[1]; n += 1; }
      }
      if (n) {
        const t = document.createElementNS(SVGNS, "text");
        t.setAttribute("x", sx / n); t.setAttribute("y", sy / n);
        t.textContent = state.debris[i] ? "\u00d7" : cell.names[k];
        g.append(t);
      }
      svg.append(g);
    });
  }

  function drawInfo() {
    const box = $("info");
    if (sel < 0) {
      box.innerHTML = '<p class="muted">Click a chromosome (here or in the karyogram), or press &rarr;.</p>';
      return;
    }
    const c = info(sel);
    const k = state.labels[sel];
    const flags = state.flags[sel];
    box.innerHTML = "";
    const h = document.createElement("h3");
    h.textContent = "Chromosome #" + sel + ": " + (state.debris[sel] ? "not a chromosome" : "class " + cell.names[k]);
    const p = document.createElement("p");
    p.textContent = (sel >= cell.chromosomes.length ? "added by an edit (from #" + c.from.join(", #") + ")" : "pipeline: " + cell.names[c.pipeline_label]) +
      (c.confidence !== null ? " (confidence " + c.confidence.toFixed(2) + ")" : "") +
      (c.top.length ? "; classifier: " + c.top.map((t) => t.name + " " + t.p.toFixed(2)).join(", ") : "") +
      (state.flipped[sel] ? "; polarity flipped" : "") +
      (flags.length ? "; flags: " + flags.map((f) => FLAG_WORDS[f] || f.replace("_", " ")).join(", ") : "");
    const row = document.createElement("div");
    row.className = "actions";
    const selEl = document.createElement("select");
    selEl.id = "move-to";
    for (let j = 0; j <= 24; j++) {
      const o = document.createElement("option");
      o.value = j; o.textContent = j ? cell.names[j] : "unassigned";
      if (j === k) o.selected = true;
      selEl.append(o);
    }
    selEl.addEventListener("change", () => moveTo(sel, Number(selEl.value)));
    const btn = (label, fn, id) => { const b = document.createElement("button"); b.textContent = label; b.id = id; b.addEventListener("click", fn); return b; };
    row.append("move to ", selEl, " ",
      btn(state.debris[sel] ? "Restore (d)" : "Not a chromosome (d)", () => toggleDebris(sel), "btn-debris"), " ",
      btn("Flip polarity (r)", () => flip(sel), "btn-flip"), " ",
      btn(swapFrom >= 0 ? "Swap with #" + swapFrom + " (s)" : "Swap\u2026 (s)", () => swapKey(), "btn-swap"), " ",
      btn("Homologs (h)", () => openPair(state.labels[sel]), "btn-pair"));
    box.append(h, p, row);
  }

  // ------------------------------------------------------------------ homologs beside the ideogram
  let pairClass = 0;        // the class shown in the homolog view (0: closed)
  const ideograms = {};     // "class/resolution" -> /api/ideogram answer
  const PAIR_HEIGHT = 260;  // pixels of the longest homolog
  function openPair(k) {
    if (!(k >= 1 && k <= 24)) { message("Select a chromosome with a class first", "error"); return; }
    const first = !pairClass;
    pairClass = k;
    $("help").open = false;  // room for the view
    drawPair().then(() => { if (first) $("pair").scrollIntoView({ block: "nearest" }); });
  }
  function closePair() { pairClass = 0; $("pair").hidden = true; }
  function bandFill(b) {
    if (b.stain === "acen") return "#c0392b";
    if (b.stain === "gvar") return "#5d6d7e";
    if (b.stain === "stalk") return "#aab7b8";
    const g = Math.round(255 - 2.3 * b.density);
    return "rgb(" + g + "," + g + "," + g + ")";
  }
  async function drawPair() {
    if (!pairClass) return;
    const k = pairClass, res = $("pair-res").value, key = k + "/" + res;
    if (!ideograms[key]) {
      try { ideograms[key] = await request("/api/ideogram/" + k + "?resolution=" + res); }
      catch (err) { message(err.message, "error"); return; }
      if (pairClass !== k) return;
    }
    const ideo = ideograms[key];
    const ids = present().filter((i) => state.labels[i] === k);
    $("pair").hidden = false;
    $("pair-title").textContent = "Chromosome " + cell.names[k] + ": " + ids.length + " cop" + (ids.length === 1 ? "y" : "ies");
    const body = $("pair-body");
    body.textContent = "";
    if (!ids.length) { body.textContent = "none in this cell"; return; }
    const boxes = ids.map(cropBox);
    const s = Math.min(6, PAIR_HEIGHT / Math.max(...boxes.map((b) => b.h)));
    const above = Math.max(...boxes.map((b) => b.cen * s)), meanH = boxes.reduce((a, b) => a + b.h, 0) / boxes.length * s;
    const fig = (el, caption, top) => {
      const f = document.createElement("figure");
      el.style.marginTop = Math.round(top) + "px";
      const c = document.createElement("figcaption");
      c.textContent = caption;
      f.append(el, c);
      return f;
    };
    ids.forEach((i, n) => {
      const img = document.createElement("img");
      img.src = cropUrl(i);
      img.width = Math.round(boxes[n].w * s);
      img.height = Math.round(boxes[n].h * s);
      if (state.flipped[i]) img.classList.add("flipped");
      img.dataset.id = i;
      body.append(fig(img, "#" + i, above - boxes[n].cen * s));
    });
    // the ideogram as long as the homologs on average, its centromere on theirs
    const svg = document.createElementNS(SVGNS, "svg");
    svg.classList.add("ideogram");
    svg.setAttribute("width", 22);
    svg.setAttribute("height", Math.round(meanH));
    svg.setAttribute("viewBox", "0 0 22 " + meanH);
    for (const b of ideo.bands) {
      const r = document.createElementNS(SVGNS, "rect");
      const narrow = b.stain === "acen" || b.stain === "stalk";
      r.setAttribute("x", narrow ? 6 : 2);
      r.setAttribute("width", narrow ? 10 : 18);
      r.setAttribute("y", b.start * meanH);
      r.setAttribute("height", Math.max(0.5, (b.stop - b.start) * meanH));
      r.setAttribute("fill", bandFill(b));
      const t = document.createElementNS(SVGNS, "title");
      t.textContent = cell.names[k] + b.name;
      r.append(t);
      svg.append(r);
    }
    body.append(fig(svg, ideo.resolution + " bands", above - ideo.centromere * meanH));
  }

  function draw() {
    $("iscn").textContent = state.karyotype || "no chromosome labelled";
    $("count").textContent = state.count;
    $("sanity").textContent = state.sanity_score.toFixed(3);
    $("nflagged").textContent = state.n_flagged;
    const r = cell.review;
    $("status").textContent = (dirty() ? "unsaved edits \u00b7 " : "") + (revision ? (r.status === "saved" ? "draft" : r.status) +
      " rev " + revision + " by " + r.reviewer : "not reviewed");
    $("status").className = "fig" + (dirty() ? " dirty" : "");
    $("undo").disabled = !groups.length;
    $("redo").disabled = !redo.length;
    drawKaryogram();
    drawSpread();
    drawInfo();
    drawPair();
  }

  const PROMPT = "move to class ";
  function select(i) {
    // a class typed for the previous selection is dropped with its prompt
    if (typed || $("message").textContent.startsWith(PROMPT)) { typed = ""; message(""); }
    sel = i;
    for (const el of document.querySelectorAll(".selected")) el.classList.remove("selected");
    if (i >= 0) {
      const a = document.querySelector('.chrom[data-id="' + i + '"]');
      const b = document.querySelector('#spread-svg g[data-id="' + i + '"]');
      if (a) { a.classList.add("selected"); a.scrollIntoView({ block: "nearest", inline: "nearest" }); }
      if (b) b.classList.add("selected");
      // an open homolog view follows the selection
      if (pairClass && state.labels[i] > 0 && state.labels[i] !== pairClass) { pairClass = state.labels[i]; drawPair(); }
    }
    drawInfo();
  }

  // karyogram order: slots row by row, then unassigned, then debris
  function order() {
    const out = state.slots.flatMap((row) => row.flatMap(([, m]) => m));
    present().forEach((i) => { if (state.labels[i] === 0 && !state.debris[i]) out.push(i); });
    present().forEach((i) => { if (state.debris[i]) out.push(i); });
    return out;
  }
  function step(d, onlyFlagged) {
    const o = order();
    if (!o.length) return;
    let p = o.indexOf(sel);
    for (let n = 0; n < o.length; n++) {
      p = (p + d + o.length) % o.length;
      const f = state.flags[o[p]].filter((x) => x !== "unassigned" && x !== cell.not_chromosome);
      if (!onlyFlagged || f.length) { select(o[p]); return; }
    }
    message("No flagged chromosome left");
  }
  function swapKey() {
    if (sel < 0) return;
    if (swapFrom < 0 || swapFrom === sel) {
      swapFrom = sel;
      message("Swap: select the other chromosome, then press s (or the Swap button) again");
      draw();
      return;
    }
    const a = swapFrom;
    swapFrom = -1;
    swap(a, sel);
  }

  // ------------------------------------------------------------------ segmentation tools on the spread
  // each gesture goes to the server, which returns one edit (new masks, classified, the cell reassigned)
  let tool = "select";
  let joinFirst = -1;
  let stroke = null;        // {pts: [[x, y], ...], el: polyline} while a line is being drawn
  const HINTS = {
    select: "",
    cut: "Cut: drag a line across a chromosome, from outside to outside",
    join: "Join: click one piece, then the other",
    separate: "Separate: drag along one chromosome, through the crossing",
    draw: "Draw: drag around the missed chromosome (one closed loop)",
    erase: "Erase: drag over the pixels to remove (brush radius at right); Shift+drag: around them (a lasso)",
  };
  function setTool(t) {
    tool = t;
    joinFirst = -1;
    for (const b of document.querySelectorAll("#tools button[data-tool]")) b.classList.toggle("on", b.dataset.tool === t);
    $("spread").dataset.tool = t;
    if (HINTS[t]) message(HINTS[t]);  // back to select: the last edit's message stays
  }
  function imagePoint(ev) {
    const r = $("spread-svg").getBoundingClientRect();
    // the SVG's units are pixel corners (pixel i spans i..i+1); the server's points are pixel centres
    const x = (ev.clientX - r.left) * cell.width / r.width - 0.5, y = (ev.clientY - r.top) * cell.height / r.height - 0.5;
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  }
  function segment(t, params) {
    return act(async () => {
      message("Working\u2026");
      try {
        const res = await request(API + "/segment", Object.assign({ edits: flat(), tool: t }, params));
        groups.push([stamp(res.edit)]);
        redo = [];
        state = res.state;
        sel = -1;
        draw();
        message(res.message, "ok");
      } catch (err) {
        message(err.message, "error");
      }
    });
  }
  function startStroke(ev) {
    const p = imagePoint(ev);
    const el = document.createElementNS(SVGNS, "polyline");
    el.id = "stroke";
    $("spread-svg").append(el);
    stroke = { pts: [p], el: el, lasso: ev.shiftKey };
    moveStroke(ev);
  }
  function moveStroke(ev) {
    const p = imagePoint(ev);
    const q = stroke.pts[stroke.pts.length - 1];
    if (Math.hypot(p[0] - q[0], p[1] - q[1]) >= 1) stroke.pts.push(p);
    stroke.el.setAttribute("points", stroke.pts.map((v) => v.join(",")).join(" "));
  }
  function endStroke() {
    const pts = stroke.pts, lasso = stroke.lasso;
    stroke.el.remove();
    stroke = null;
    if (tool === "cut") return segment("cut", { line: pts });
    if (tool === "separate") return segment("separate", { path: pts });
    if (tool === "draw") return segment("draw", { outline: pts });
    if (tool === "erase" && lasso) return segment("erase", { outline: pts });
    if (tool === "erase") return segment("erase", { stroke: pts, radius: Number($("brush").value) });
  }
  function joinClick(ev) {
    const g = ev.target.closest("#spread-svg g.outline");
    if (!g) { message("Join: click on a chromosome's outline", "error"); return; }
    const i = Number(g.dataset.id);
    if (joinFirst < 0 || joinFirst === i) { joinFirst = i; select(i); message("Join #" + i + " with: click the other piece"); return; }
    const a = joinFirst;
    joinFirst = -1;
    segment("join", { ids: [a, i] });
  }

  // ------------------------------------------------------------------ looking closely: zoom, pan, overlay, contrast
  const view = { z: 1, tx: 0, ty: 0 };
  const OVERLAYS = ["filled", "outline", "off"];
  let pan = null;
  function applyView() {
    const box = $("spread").getBoundingClientRect();
    view.tx = Math.min(0, Math.max(box.width * (1 - view.z), view.tx));
    view.ty = Math.min(0, Math.max(box.height * (1 - view.z), view.ty));
    $("spread-view").style.transform = "translate(" + view.tx + "px, " + view.ty + "px) scale(" + view.z + ")";
    $("zoom").textContent = Math.round(view.z * 100) + "%";
  }
  // zoom by factor f about the point (cx, cy) of the spread's box (default its centre)
  function zoom(f, cx, cy) {
    const box = $("spread").getBoundingClientRect();
    if (cx === undefined) { cx = box.width / 2; cy = box.height / 2; }
    const z = Math.min(16, Math.max(1, view.z * f));
    view.tx = cx - (cx - view.tx) * (z / view.z);
    view.ty = cy - (cy - view.ty) * (z / view.z);
    view.z = z;
    applyView();
  }
  function fit() { view.z = 1; view.tx = 0; view.ty = 0; applyView(); }
  function overlay(mode) {
    const m = mode || OVERLAYS[(OVERLAYS.indexOf($("spread").dataset.overlay) + 1) % OVERLAYS.length];
    $("spread").dataset.overlay = m;
    $("overlay").textContent = "overlay: " + m;
  }
  function imageLook() {
    $("spread-img").style.filter = "contrast(" + $("contrast").value + ")" + ($("invert").checked ? " invert(1)" : "");
  }
  $("spread").addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const box = $("spread").getBoundingClientRect();
    zoom(ev.deltaY < 0 ? 1.25 : 0.8, ev.clientX - box.left, ev.clientY - box.top);
  }, { passive: false });
  $("zoom-in").addEventListener("click", () => zoom(1.5));
  $("zoom-out").addEventListener("click", () => zoom(1 / 1.5));
  $("zoom-fit").addEventListener("click", fit);
  $("overlay").addEventListener("click", () => overlay());
  $("contrast").addEventListener("input", imageLook);
  $("invert").addEventListener("change", imageLook);

  // ------------------------------------------------------------------ mouse: click to select, drag to move
  let drag = null;
  document.addEventListener("pointerdown", (ev) => {
    const onSpread = ev.target.closest("#spread");
    // pan: the middle button anywhere on the spread, or the left one on its background with the select tool
    if (onSpread && (ev.button === 1 || (ev.button === 0 && tool === "select" && !ev.target.closest("g.outline")))) {
      ev.preventDefault();
      pan = { x: ev.clientX, y: ev.clientY, tx: view.tx, ty: view.ty };
      $("spread").classList.add("panning");
      return;
    }
    if (ev.button !== 0) return;
    if (tool !== "select" && ev.target.closest("#spread")) {
      ev.preventDefault();
      if (tool === "join") joinClick(ev); else startStroke(ev);
      return;
    }
    const el = ev.target.closest(".chrom, #spread-svg g.outline");
    if (!el) return;
    ev.preventDefault();
    const i = Number(el.dataset.id);
    select(i);
    if (el.classList.contains("chrom")) drag = { id: i, x: ev.clientX, y: ev.clientY, ghost: null, el: el };
  });
  document.addEventListener("pointermove", (ev) => {
    if (pan) { view.tx = pan.tx + ev.clientX - pan.x; view.ty = pan.ty + ev.clientY - pan.y; applyView(); return; }
    if (stroke) { moveStroke(ev); return; }
    if (!drag) return;
    if (!drag.ghost) {
      if (Math.hypot(ev.clientX - drag.x, ev.clientY - drag.y) < 4) return;
      drag.ghost = drag.el.cloneNode(true);
      drag.ghost.classList.add("ghost");
      document.body.append(drag.ghost);
    }
    drag.ghost.style.left = ev.clientX + 6 + "px";
    drag.ghost.style.top = ev.clientY + 6 + "px";
    for (const d of document.querySelectorAll(".drop.over")) d.classList.remove("over");
    const t = document.elementFromPoint(ev.clientX, ev.clientY);
    const drop = t && t.closest(".drop");
    if (drop) drop.classList.add("over");
  });
  document.addEventListener("pointerup", (ev) => {
    if (pan) { pan = null; $("spread").classList.remove("panning"); return; }
    if (stroke) { endStroke(); return; }
    if (!drag) return;
    const d = drag;
    drag = null;
    for (const o of document.querySelectorAll(".drop.over")) o.classList.remove("over");
    if (!d.ghost) return;
    d.ghost.remove();
    const t = document.elementFromPoint(ev.clientX, ev.clientY);
    const drop = t && t.closest(".drop");
    if (!drop) return;
    if (drop.dataset.debris) { if (!state.debris[d.id]) toggleDebris(d.id); return; }
    moveTo(d.id, Number(drop.dataset.class));
  });

  // ------------------------------------------------------------------ keyboard
  document.addEventListener("keydown", (ev) => {
    if ($("confirm").open) return;  // the dialog's own keys (Enter, Esc)
    if (ev.target.matches("input, select, textarea")) {
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    const k = ev.key;
    const ctrl = ev.ctrlKey || ev.metaKey;
    let done = true;
    if (ctrl && (k === "s" || k === "S")) save("saved");
    else if (ctrl && (k === "z" || k === "Z")) (ev.shiftKey ? redoOne : undo)();
    else if (ctrl && (k === "y" || k === "Y")) redoOne();
    else if (ctrl || ev.altKey) done = false;
    else if (/^[0-9]$/.test(k)) {
      if (sel < 0) { typed = ""; message("Select a chromosome first, then type its class", "error"); }
      else { typed = (typed + k).slice(-2); message(PROMPT + typed + " \u2014 Enter to apply, Esc to cancel"); }
    }
    else if (k === "Enter" && typed) {
      const n = Number(typed); typed = "";
      if (sel < 0) message("Select a chromosome first, then type its class", "error");
      else if (n >= 1 && n <= 22) moveTo(sel, n); else message("No class " + n + " (1-22, x, y, u)", "error");
    }
    else if (k === "Escape") { typed = ""; swapFrom = -1; setTool("select"); select(-1); draw(); }
    else if (k === "v") setTool("select");
    else if (k === "h") { if (pairClass) closePair(); else if (sel >= 0) openPair(state.labels[sel]); else message("Select a chromosome first", "error"); }
    else if (k === "+" || k === "=") zoom(1.5);
    else if (k === "-") zoom(1 / 1.5);
    else if (k === "w") fit();
    else if (k === "m") overlay();
    else if (k === "i") { $("invert").checked = !$("invert").checked; imageLook(); }
    else if (k === "c") setTool("cut");
    else if (k === "j") setTool("join");
    else if (k === "p") setTool("separate");
    else if (k === "o") setTool("draw");
    else if (k === "e") setTool("erase");
    else if (k === "x" || k === "X") moveTo(sel, 23);
    else if (k === "y" || k === "Y") moveTo(sel, 24);
    else if (k === "u") moveTo(sel, 0);
    else if (k === "d" || k === "Delete") toggleDebris(sel);
    else if (k === "r") flip(sel);
    else if (k === "s") swapKey();
    else if (k === "z") undo();
    else if (k === "Z") redoOne();
    else if (k === "a") save("accepted");
    else if (k === "n") save("unanalysable");
    else if (k === "ArrowRight" || k === "ArrowDown") step(1, false);
    else if (k === "ArrowLeft" || k === "ArrowUp") step(-1, false);
    else if (k === "f") step(1, true);
    else if (k === "F") step(-1, true);
    else if (k === "]" && cell.next) window.location = "/cell/" + encodeURIComponent(cell.next);
    else if (k === "[" && cell.prev) window.location = "/cell/" + encodeURIComponent(cell.prev);
    else if (k === "?") { const h = $("help"); h.open = !h.open; }
    else done = false;
    if (done) ev.preventDefault();
  });

  window.addEventListener("beforeunload", (ev) => { if (cell && dirty()) { ev.preventDefault(); ev.returnValue = ""; } });
  $("undo").addEventListener("click", () => undo());
  $("redo").addEventListener("click", () => redoOne());
  $("save").addEventListener("click", () => save("saved"));
  $("accept").addEventListener("click", () => save("accepted"));
  $("unanalysable").addEventListener("click", () => save("unanalysable"));
  $("pair-close").addEventListener("click", closePair);
  $("pair-res").addEventListener("change", () => drawPair());
  document.addEventListener("dblclick", (ev) => {
    const el = ev.target.closest(".chrom, #spread-svg g.outline");
    if (el) openPair(state.labels[Number(el.dataset.id)]);
  });
  for (const b of document.querySelectorAll("#tools button[data-tool]")) b.addEventListener("click", () => setTool(b.dataset.tool));
  $("tool-delete").addEventListener("click", () => { if (sel < 0) message("Select a chromosome first", "error"); else toggleDebris(sel); });
  // the name typed in this tab is kept while moving between cells (never a default from the machine)
  $("reviewer").value = sessionStorage.getItem("karyo-reviewer") || "";

  // ------------------------------------------------------------------ start
  (async function start() {
    try {
      cell = await request(API);
    } catch (err) {
      message(err.message, "error");
      return;
    }
    const maxH = Math.max(1, ...cell.chromosomes.map((c) => c.crop.h));
    cell.zoom = Math.min(1.6, 110 / maxH);
    revision = cell.review.revision;
    // each saved edit is one undo step: the grouping of the actions that made them is not saved, and one z
    // must never take back more than one edit of a saved revision
    groups = cell.review.edits.map((e) => [e]);
    savedSig = sig(flat());
    savedCount = flat().length;
    state = cell.state;
    const img = $("spread-img");
    img.src = "/cell/" + encodeURIComponent(STEM) + "/image.png";
    $("spread-svg").setAttribute("viewBox", "0 0 " + cell.width + " " + cell.height);
    // a tall spread must leave room for the chromosome's details below it
    $("spread").style.maxWidth = "calc(60vh * " + (cell.width / cell.height).toFixed(4) + ")";
    for (const [id, s] of [["prev", cell.prev], ["next", cell.next]]) {
      if (s) $(id).href = "/cell/" + encodeURIComponent(s); else $(id).classList.add("disabled");
    }
    draw();
    document.body.dataset.ready = "1";
    if (cell.notes.length) message(cell.notes.join(" "), "error");
    else message(cell.review.revision ? "Loaded revision " + revision + " (" + savedCount + " edits)" : "");
  })();
})();
