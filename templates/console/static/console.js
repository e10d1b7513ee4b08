// Live progress of a campaign page: polls the page's progress URL (the API's campaign
// shape, read with the session cookie) and updates the bar and the figures. Without
// JavaScript the page refreshes itself instead (a <noscript> meta refresh).
"use strict";
(function () {
  const panel = document.querySelector("[data-progress-url]");
  if (!panel) return;
  const url = panel.getAttribute("data-progress-url");
  const shown = panel.getAttribute("data-status");
  const bar = panel.querySelector("progress");
  const percent = panel.querySelector("[data-field=percent]");
  const set = (name, value) => {
    const el = panel.querySelector(`[data-field=${name}]`);
    if (el) el.textContent = value;
  };
  async function poll() {
    let data;
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.redirected || !response.ok) { window.location.reload(); return; }
      data = await response.json();
    } catch (error) {
      setTimeout(poll, 3000);
      return;
    }
    bar.value = data.progress;
    percent.textContent = `${Math.round(data.progress * 100)}%`;
    set("status", data.status);
    set("rate", data.rate_per_second.toFixed(2));
    set("eta", data.eta_seconds === null ? "–" : `${Math.ceil(data.eta_seconds)} s`);
    set("counts", Object.entries(data.counts).map(([k, v]) => `${k}: ${v}`).join(", ") || "none yet");
    set("errors", data.first_errors.map((e) => `#${e.id} ${e.status}: ${e.last_error}`).join("\n") || "none");
    if (data.status !== shown) { window.location.reload(); return; }
    setTimeout(poll, 1000);
  }
  setTimeout(poll, 1000);
})();
