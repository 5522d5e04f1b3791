// The page's only script: copy buttons, and the live part (status,
// downloads, pulls) refreshed from /ui/live every few seconds (the page
// itself is complete without it).
"use strict";
(function () {
  var POLL_MS = 5000;

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

  // The server renders the live part (in the page's language); the
  // script only puts it in place, so there is one rendering of it.
  function poll() {
    var live = document.getElementById("live");
    if (!live) { return; }
    var lang = live.getAttribute("data-lang") || "en";
    fetch("/ui/live?lang=" + encodeURIComponent(lang), { cache: "no-store", credentials: "same-origin" })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
      .then(function (html) {
        live.innerHTML = html;
        set("st-updated", new Date().toLocaleTimeString());
      })
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
