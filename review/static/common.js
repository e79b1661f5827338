// Helpers of every page with a message line and JSON requests (the cell page, the case page).
window.KaryoReview = (function () {
  "use strict";
  // the status line under the bar: kind "ok", "error" or none
  function message(text, kind) {
    const m = document.getElementById("message");
    m.textContent = text || "";
    m.className = kind || "";
  }

  // GET (no body) or POST a JSON body; the answer's JSON, or an Error with the server's message and status
  async function request(url, body) {
    const res = await fetch(url, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = { error: "the server answered " + res.status }; }
    if (!res.ok) { const err = new Error(data.error || ("HTTP " + res.status)); err.status = res.status; throw err; }
    return data;
  }

  return { message: message, request: request };
})();
