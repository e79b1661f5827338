// Index of cells: j/k or arrow keys move the highlight, Enter opens the cell, a click on a row opens it.
(function () {
  "use strict";
  const rows = Array.from(document.querySelectorAll("tr.cell-row"));
  let cur = rows.length ? 0 : -1;
  function show() {
    rows.forEach((r, i) => r.classList.toggle("current", i === cur));
    if (cur >= 0) rows[cur].scrollIntoView({ block: "nearest" });
  }
  document.addEventListener("keydown", (ev) => {
    if (!rows.length || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "j" || ev.key === "ArrowDown") cur = Math.min(cur + 1, rows.length - 1);
    else if (ev.key === "k" || ev.key === "ArrowUp") cur = Math.max(cur - 1, 0);
    else if (ev.key === "Enter") { window.location = rows[cur].dataset.href; return; }
    else return;
    ev.preventDefault();
    show();
  });
  rows.forEach((r) => r.addEventListener("click", (ev) => {
    if (ev.target.closest("a")) return;
    window.location = r.dataset.href;
  }));
  show();
})();
