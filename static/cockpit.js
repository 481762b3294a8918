// Every page: how fresh its data is, the banner in the tab's title, and heartbeat changes told to screen readers.
(function () {
  "use strict";
  const LOST_AFTER_MS = 10000;  // two missed banner refreshes (every 5 s): say the connection is lost
  const freshness = document.getElementById("freshness");
  const announcer = document.getElementById("announcer");
  const pageTitle = document.title.replace(/^⚠ [^·]*· /, "");
  let lastOkMs = freshness ? Number(freshness.dataset.readMs) || Date.now() : Date.now();
  let isLost = false;
  let heartbeatSaid = heartbeatText();

  // In a replay the page's absolute times are the file's: this machine's times are written as ages there.
  const asAges = freshness !== null && freshness.hasAttribute("data-ages");

  function hms(ms) { return new Date(ms).toISOString().slice(11, 19) + " UTC"; }

  function ago(ms) {  // as core/dashboard.duration: '12 s', '5 min', '3 h', '2 d'
    const seconds = Math.max(0, (Date.now() - ms) / 1000);
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
      if (seconds >= 2 * size) return Math.floor(seconds / size) + " " + unit + " ago";
    }
    return Math.round(seconds) + " s ago";
  }

  function when(ms) { return asAges ? ago(ms) : hms(ms); }

  function heartbeatText() {
    const state = document.querySelector("#heartbeat-tile .big");
    return state ? state.textContent.trim() : null;
  }

  function say(text) {
    if (!announcer) return;
    announcer.textContent = "";  // the same words twice are announced twice
    window.setTimeout(() => { announcer.textContent = text; }, 50);
  }

  function showTitle() {
    const banner = document.getElementById("banner");
    const kinds = [];
    if (isLost) kinds.push("connection lost");
    if (banner && banner.dataset.title) kinds.push(banner.dataset.title);
    document.title = (kinds.length ? "⚠ " + kinds.join(", ") + " · " : "") + pageTitle;
  }

  function showFreshness() {
    if (!freshness || !document.querySelector("[hx-trigger^='every']")) return;  // a page without refreshes
    const wasLost = isLost;
    isLost = Date.now() - lastOkMs > LOST_AFTER_MS;
    freshness.textContent = (isLost ? "connection lost · last update " : "updated ") + when(lastOkMs);
    freshness.classList.toggle("lost", isLost);
    document.body.classList.toggle("connection-lost", isLost);
    if (isLost !== wasLost) {
      say(isLost ? "Connection lost; the page shows data of " + when(lastOkMs) : "Connection back");
      showTitle();
    }
  }

  // An unchanged banner is not swapped: a screen reader would read it out again every 5 s.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const target = event.detail.target;
    if (target && target.id === "banner" && event.detail.xhr.status === 200) {
      const next = document.createElement("template");
      next.innerHTML = event.detail.serverResponse.trim();
      const fresh = next.content.firstElementChild;
      if (fresh && fresh.innerHTML.trim() === target.innerHTML.trim()) event.detail.shouldSwap = false;
    }
  });

  document.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful) { lastOkMs = Date.now(); showFreshness(); }
  });

  document.addEventListener("htmx:afterSettle", () => {
    showTitle();
    const now = heartbeatText();
    if (now !== null && now !== heartbeatSaid) {
      heartbeatSaid = now;
      const reason = document.querySelector("#heartbeat-tile .big + .muted");
      say("Heartbeat " + now + (reason ? ": " + reason.textContent.trim() : ""));
    }
  });

  window.setInterval(showFreshness, 1000);
  showTitle();
})();
