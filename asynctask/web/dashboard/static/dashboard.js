// asynctask dashboard: keeps an open page up to date, follows a task's log, asks before bulk actions.
// Loaded as a file (the page's Content-Security-Policy allows no inline script). Task data is
// only ever inserted as text: the page's regions come escaped from the server, log lines go
// through text nodes.
(function () {
  "use strict";

  var body = document.body;
  var every = Number(body.getAttribute("data-refresh")) || 0;
  var paused = false;
  var busy = false;
  var refreshes = 0;

  // -- refresh: fetch this page again and swap the regions marked data-live ----------------------

  function swap(fresh) {
    var regions = document.querySelectorAll("[data-live]");
    for (var i = 0; i < regions.length; i++) {
      var old = regions[i];
      var next = fresh.getElementById(old.id);
      if (!next || next.outerHTML === old.outerHTML) continue;
      var focused = document.activeElement;
      var focusId = focused && old.contains(focused) ? focused.id : "";
      old.replaceWith(document.importNode(next, true));
      if (focusId) {
        var again = document.getElementById(focusId);
        if (again) again.focus();
      }
    }
  }

  function refresh() {
    if (paused || busy || document.hidden) return Promise.resolve();
    busy = true;
    return fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected && /\/login$/.test(new URL(response.url).pathname)) {
          location.assign(response.url); // signed out meanwhile
          return;
        }
        if (!response.ok) return;
        return response.text().then(function (html) {
          swap(new DOMParser().parseFromString(html, "text/html"));
          refreshes += 1;
          body.setAttribute("data-refreshes", String(refreshes));
          var state = document.getElementById("live-state");
          if (state) state.title = "Updated " + new Date().toLocaleTimeString();
        });
      })
      .catch(function () { /* the next round tries again */ })
      .then(function () { busy = false; });
  }

  function loop() {
    refresh().then(function () { setTimeout(loop, every); });
  }

  if (every > 0) {
    var state = document.getElementById("live-state");
    var pause = document.getElementById("pause");
    if (state) state.hidden = false;
    if (pause) {
      pause.hidden = false;
      pause.addEventListener("click", function () {
        paused = !paused;
        pause.setAttribute("aria-pressed", String(paused));
        pause.textContent = paused ? "Resume updates" : "Pause updates";
        if (state) {
          state.textContent = paused ? "Paused" : "Live";
          state.classList.toggle("paused", paused);
        }
      });
    }
    setTimeout(loop, every);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  // -- a task's log: read on from the byte offset while the task runs --------------------------

  var log = document.getElementById("log");
  if (log) {
    var offset = Number(log.getAttribute("data-offset")) || 0;
    var decoder = new TextDecoder("utf-8");
    var quiet = 0; // empty reads since the task finished
    var finished = function () {
      var head = document.getElementById("task-head");
      return head && head.getAttribute("data-finished") === "true";
    };
    var follow = function () {
      var wasFinished = finished();
      var url = log.getAttribute("data-url") + "?offset=" + offset;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) return 0;
          var next = Number(response.headers.get("X-Log-Offset"));
          return response.arrayBuffer().then(function (buffer) {
            if (next !== offset + buffer.byteLength) { // the file was rotated: it starts over
              log.textContent = "";
              decoder = new TextDecoder("utf-8");
            }
            offset = next;
            var text = decoder.decode(buffer, { stream: true });
            if (text) {
              var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
              log.appendChild(document.createTextNode(text));
              if (atEnd) log.scrollTop = log.scrollHeight;
              var empty = document.getElementById("log-empty");
              if (empty) empty.remove();
            }
            return buffer.byteLength;
          });
        })
        .catch(function () { return 0; })
        .then(function (read) {
          var status = document.getElementById("log-state");
          quiet = wasFinished && !read ? quiet + 1 : 0;
          if (quiet >= 2) { // finished, and its last lines are in
            if (status) status.textContent = "";
            return;
          }
          if (status) status.textContent = finished() ? "" : "following";
          setTimeout(follow, read ? 250 : 1000);
        });
    };
    log.scrollTop = log.scrollHeight;
    follow();
  }

  // -- forms: ask before a bulk action; apply a filter as soon as it changes --------------------

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
  var filters = document.querySelectorAll("form[data-autosubmit] select");
  for (var i = 0; i < filters.length; i++) {
    filters[i].addEventListener("change", function (event) { event.target.form.requestSubmit(); });
  }

  // A notice belongs to the action that caused it: drop it from the address so a reload or a
  // refresh does not show it again.
  var address = new URL(location.href);
  if (address.searchParams.has("notice")) {
    ["notice", "matched", "changed", "was"].forEach(function (name) { address.searchParams.delete(name); });
    history.replaceState(null, "", address.pathname + address.search + address.hash);
  }
})();
