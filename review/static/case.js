// The case page: tick the cells analysed, type the case karyotype, the cells counted and your name, save (every
// revision is kept by the server), then make the PDF report of the saved case.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const { message, request } = window.KaryoReview;  // common.js
  const CASE = $("case-id").textContent;
  const API = "/api/case/" + encodeURIComponent(CASE);
  const DATA = JSON.parse($("case-data").textContent);
  const boxes = Array.from(document.querySelectorAll("input.analysed"));

  let revision = DATA.revision;
  let busy = Promise.resolve();

  function form() {
    return {
      iscn: $("iscn").value.trim(),
      counted: $("counted").value === "" ? null : Number($("counted").value),
      analysed: boxes.filter((b) => b.checked).map((b) => b.value),
    };
  }
  const sig = (f) => JSON.stringify([f.iscn, f.counted, f.analysed]);
  let savedSig = revision ? sig(form()) : "";
  const dirty = () => sig(form()) !== savedSig;

  let statusText = $("case-status").textContent;
  function show() {
    $("n-analysed").textContent = form().analysed.length;
    $("case-status").textContent = statusText + (dirty() ? " \u00b7 unsaved changes" : "");
    $("case-status").classList.toggle("dirty", dirty());
  }

  function act(fn) { busy = busy.then(fn).catch((e) => message(e.message, "error")); return busy; }

  function save() {
    return act(async () => {
      const reviewer = $("reviewer").value.trim();
      if (!reviewer) { message("Type your name in 'reviewer' first", "error"); $("reviewer").focus(); return; }
      sessionStorage.setItem("karyo-reviewer", reviewer);
      const f = form();
      if (!f.analysed.length) { message("Tick the cells analysed first (one page each in the report)", "error"); return; }
      message("Saving\u2026");
      try {
        const res = await request(API + "/save", Object.assign({ base_revision: revision, reviewer: reviewer }, f));
        revision = res.revision;
        savedSig = sig(f);
        statusText = "signed: rev " + res.revision + " by " + reviewer + ", " + res.saved_at;
        const li = document.createElement("li");
        li.textContent = "rev " + res.revision + ": " + reviewer + ", " + res.saved_at + ": " + f.iscn + ", " +
          f.counted + " counted, " + f.analysed.length + " analysed (" + f.analysed.join(", ") + ")";
        $("revisions").append(li);
        show();
        message("Saved the case (revision " + res.revision + "): " + res.file, "ok");
      } catch (err) {
        message((err.status === 409 ? "Conflict: " : "Not saved: ") + err.message, "error");
      }
    });
  }

  function report() {
    return act(async () => {
      if (!revision || dirty()) { message("Save the case first: the report is made from the saved case", "error"); return; }
      message("Writing the report\u2026");
      try {
        const res = await request(API + "/report", { revision: revision });
        const link = $("report-link");
        link.href = res.url;
        link.hidden = false;
        const m = $("message");
        m.className = "ok";
        m.textContent = "Report written (" + res.pages + " pages: the summary and " + (res.pages - 1) +
          " cell(s)): ";
        const a = document.createElement("a");
        a.href = res.url; a.textContent = res.file; a.id = "report-written";
        m.append(a);
      } catch (err) {
        message("No report: " + err.message, "error");
      }
    });
  }

  $("save").addEventListener("click", save);
  $("report").addEventListener("click", report);
  $("use-suggestion").addEventListener("click", () => { $("iscn").value = DATA.suggestion; show(); });
  for (const id of ["iscn", "counted"]) $(id).addEventListener("input", show);
  for (const b of boxes) b.addEventListener("change", show);
  document.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "s") { ev.preventDefault(); save(); }
  });
  // the name typed in this tab (on a cell page or here); never a default from the machine
  $("reviewer").value = sessionStorage.getItem("karyo-reviewer") || "";
  show();
  document.body.dataset.ready = "1";
})();
