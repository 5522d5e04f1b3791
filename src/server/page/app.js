// The page's only script: copy buttons, and the status figures refreshed
// from /api/v1/status every few seconds (the page itself is complete
// without it). Labels come from the server-rendered page, in its language.
"use strict";
(function () {
  var POLL_MS = 5000;

  function human(n) {
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + u[i];
  }
  function set(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  function copyText(text, button) {
    var done = function () {
      var label = button.textContent;
      button.textContent = button.getAttribute("data-done") || "✓";
      setTimeout(function () { button.textContent = label; }, 1200);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else { fallback(text); done(); }
  }
  // Plain-HTTP mirrors (the common case on a LAN) have no Clipboard API.
  function fallback(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing else to try */ }
    document.body.removeChild(ta);
  }

  function render(s) {
    var c = s.cache;
    set("st-bytes", human(c.bytes) + (c.max_size ? " / " + human(c.max_size) : ""));
    var bar = document.getElementById("st-bar");
    if (bar) { bar.style.width = c.max_size ? Math.min(100, 100 * c.bytes / c.max_size) + "%" : "0"; }
    set("st-blobs", String(c.blobs));
    set("st-manifests", String(c.manifests));
    set("st-tags", String(c.tags));
    set("st-repositories", String(c.repositories));
    set("st-hits", String(s.lookups.hits));
    set("st-misses", String(s.lookups.misses));
    var total = s.lookups.hits + s.lookups.misses;
    set("st-ratio", total ? (100 * s.lookups.hits / total).toFixed(1) + "%" : "-");
    set("st-from-cache", human(s.bytes_served.cache));
    set("st-from-upstream", human(s.bytes_served.upstream));
    set("st-downloads", String(s.downloads_in_flight));
    s.upstreams.forEach(function (u, i) {
      var el = document.getElementById("up-" + i);
      if (!el) { return; }
      el.className = u.circuit_open ? "bad" : "ok";
      el.textContent = el.getAttribute(u.circuit_open ? "data-open" : "data-closed");
      set("up-rl-" + i, u.ratelimit_remaining === null ? "-" :
        u.ratelimit_remaining + " / " + u.ratelimit_limit);
    });
    set("st-updated", new Date().toLocaleTimeString());
  }

  function poll() {
    fetch("/api/v1/status", { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(render)
      .catch(function () { set("st-updated", "-"); })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".snip").forEach(function (snip) {
      var pre = snip.querySelector("pre"), button = snip.querySelector("button.copy");
      if (pre && button) {
        button.hidden = false;
        button.addEventListener("click", function () { copyText(pre.textContent, button); });
      }
    });
    poll();
  });
})();
