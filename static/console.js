/* Memory Admin console: countdowns, the live feed's cursor, pause/resume and row upserts.
   No inline scripts anywhere: everything hangs off data- attributes and htmx events. */
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // --- times: countdowns (data-expires) and ages (data-since) tick between pushes -------------
  function fmt(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-expires]").forEach(function (el) {
      var left = (Date.parse(el.dataset.expires) - now) / 1000;
      if (isNaN(left)) return;
      el.textContent = fmt(left);
      el.classList.toggle("lapsed", left <= 0);
      el.classList.toggle("soon", left > 0 && left <= 10);
    });
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var age = (now - Date.parse(el.dataset.since)) / 1000;
      if (!isNaN(age)) el.textContent = fmt(age);
    });
  }
  setInterval(tick, 1000);

  // Times in the reader's own zone: the full date and zone on hover, the date in the text
  // when it is not today (an event row's `time.when`; `time.when-full` always has it).
  var FULL = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
               second: "2-digit", hour12: false, timeZoneName: "short" };
  function localTimes() {
    var today = new Date().toDateString();
    document.querySelectorAll("time[datetime], time[data-since]").forEach(function (el) {
      var moment = new Date(el.getAttribute("datetime") || el.dataset.since);
      if (isNaN(moment)) return;
      el.title = moment.toLocaleString(undefined, FULL);
      if (el.classList.contains("when-full")) {
        el.textContent = el.title;
      } else if (el.classList.contains("when")) {
        el.textContent = moment.toDateString() === today
          ? moment.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })
          : moment.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hour12: false });
      }
    });
  }
  document.addEventListener("DOMContentLoaded", localTimes);
  document.addEventListener("htmx:afterSettle", localTimes);

  // A live update re-renders a record's history: the versions the reader picked to compare
  // stay picked (the diff below them is the one they asked for).
  function pickedVersions() {
    var picked = {};
    document.querySelectorAll("#versions input[type=radio]:checked").forEach(function (input) {
      picked[input.name] = input.value;
    });
    return picked;
  }
  function pickVersions(picked) {
    Object.keys(picked || {}).forEach(function (name) {
      document.querySelectorAll("#versions input[type=radio]").forEach(function (input) {
        if (input.name === name) input.checked = input.value === picked[name];
      });
    });
  }
  var keptPicks = null;

  // --- the live feed ----------------------------------------------------------------------------
  // The page knows the last event it shows (#live-cursor). On every (re)connect, and on resume,
  // it tells the server, which replays the log after it: nothing is missed, nothing doubled.
  var socket = null;
  var paused = false;
  var waiting = 0;

  function cursor() {
    var el = document.getElementById("live-cursor");
    return el ? parseInt(el.dataset.eventId || "0", 10) : 0;
  }
  function setState(state, text) {
    var live = document.getElementById("live");
    if (!live) return;
    live.dataset.state = state;
    var label = live.querySelector(".live-text");
    if (label) label.textContent = text || state;
  }
  function hello() {
    if (socket) socket.send(JSON.stringify({ after: cursor() }));
  }

  document.addEventListener("htmx:wsConnecting", function () { setState("connecting"); });
  document.addEventListener("htmx:wsOpen", function (e) {
    socket = e.detail.socketWrapper;
    setState(paused ? "paused" : "live");
    hello();
  });
  document.addEventListener("htmx:wsClose", function () {
    socket = null;
    setState("reconnecting");
  });
  document.addEventListener("htmx:wsBeforeMessage", function (e) {
    if (!paused) keptPicks = pickedVersions();
    if (paused) {
      e.preventDefault(); // not applied, so the cursor stays: resume replays these
      waiting += 1;
      var note = document.getElementById("paused-note");
      if (note) {
        note.hidden = false;
        note.textContent = waiting + (waiting === 1 ? " update" : " updates") + " waiting";
      }
    }
  });
  document.addEventListener("htmx:wsAfterMessage", function () {
    var el = document.getElementById("live-cursor");
    if (el && el.dataset.reload) {
      window.location.reload(); // too far behind to replay: start from the page
      return;
    }
    document.querySelectorAll("[data-max]").forEach(function (list) {
      var max = parseInt(list.dataset.max, 10);
      while (list.children.length > max) list.lastElementChild.remove();
    });
    pickVersions(keptPicks);
    keptPicks = null;
    localTimes();
    tick();
  });

  // Pushed rows are upserts: a row already on the page is replaced in place (a replay or a
  // page rendered after the event may already show it); a row marked data-remove goes.
  document.addEventListener("htmx:oobBeforeSwap", function (e) {
    var frag = e.detail.fragment;
    if (!frag || frag.nodeType !== 1) return; // whole-element swaps replace by id already
    Array.from(frag.children).forEach(function (el) {
      if (!el.id) return;
      var existing = document.getElementById(el.id);
      if (el.hasAttribute("data-remove")) {
        if (existing) existing.remove();
        el.remove();
      } else if (existing) {
        existing.replaceWith(el);
        htmx.process(el);
      }
    });
  });

  // Periodic refreshes (Redis-only changes such as renewals make no event) must not wipe a
  // form someone is filling in.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var elt = e.detail.elt;
    if (elt && elt.hasAttribute && elt.hasAttribute("data-refresh")) {
      if (elt.querySelector("details[open]") || elt.contains(document.activeElement)) e.preventDefault();
    }
  });

  // --- small controls ----------------------------------------------------------------------------
  document.addEventListener("click", function (e) {
    var pause = e.target.closest("[data-pause]");
    if (pause) {
      paused = !paused;
      pause.textContent = paused ? "Resume" : "Pause";
      pause.setAttribute("aria-pressed", paused ? "true" : "false");
      setState(paused ? "paused" : (socket ? "live" : "reconnecting"));
      var note = document.getElementById("paused-note");
      if (!paused) {
        if (waiting) hello();
        waiting = 0;
        if (note) note.hidden = true;
      } else if (note) {
        note.hidden = false;
        note.textContent = "paused";
      }
      return;
    }
    var select = e.target.closest("[data-select]");
    if (select) {
      var range = document.createRange();
      range.selectNodeContents(select);
      var sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
    }
  });
  // Keyboard: "/" focuses the search box (unless typing somewhere already); Escape leaves it.
  document.addEventListener("keydown", function (e) {
    var box = document.getElementById("search-box");
    if (!box) return;
    var t = e.target;
    var typing = t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
    if (e.key === "/" && !typing && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      box.focus();
      box.select();
    } else if (e.key === "Escape" && t === box) {
      box.blur();
    }
  });

  // Saved timeline filters: a name and the filter's URL, kept in this browser.
  var SAVED = "memory-admin:saved-filters";
  function savedFilters() {
    try { return JSON.parse(localStorage.getItem(SAVED) || "[]"); } catch (err) { return []; }
  }
  function showSavedFilters() {
    var list = document.getElementById("saved-filters");
    if (!list) return;
    list.textContent = "";
    savedFilters().forEach(function (f, i) {
      var li = document.createElement("li");
      var a = document.createElement("a");
      a.href = f.url;
      a.textContent = f.name;
      var drop = document.createElement("button");
      drop.type = "button";
      drop.className = "link small";
      drop.dataset.dropFilter = String(i);
      drop.textContent = "×";
      drop.setAttribute("aria-label", "forget " + f.name);
      li.appendChild(a);
      li.appendChild(drop);
      list.appendChild(li);
    });
    list.hidden = list.children.length === 0;
  }
  document.addEventListener("DOMContentLoaded", showSavedFilters);
  document.addEventListener("submit", function (e) {
    if (!e.target.matches("[data-save-filter]")) return;
    e.preventDefault();
    var name = e.target.elements.name.value.trim();
    if (!name) return;
    var url = window.location.pathname + window.location.search;
    var all = savedFilters().filter(function (f) { return f.name !== name; });
    all.push({ name: name, url: url });
    localStorage.setItem(SAVED, JSON.stringify(all));
    e.target.reset();
    showSavedFilters();
  });
  document.addEventListener("click", function (e) {
    var drop = e.target.closest("[data-drop-filter]");
    if (!drop) return;
    var all = savedFilters();
    all.splice(parseInt(drop.dataset.dropFilter, 10), 1);
    localStorage.setItem(SAVED, JSON.stringify(all));
    showSavedFilters();
  });

  // The as-of picker: the slider and the number box show the same event.
  document.addEventListener("input", function (e) {
    var form = e.target.form;
    if (!form) return;
    if (e.target.dataset.mirror) {
      var box = document.getElementById(e.target.dataset.mirror);
      if (box) box.value = e.target.value;
    } else if (e.target.dataset.mirrorOf) {
      var slider = form.elements[e.target.dataset.mirrorOf];
      if (slider) slider.value = e.target.value;
    }
  });
  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-autosubmit]")) e.target.form.submit();
  });
})();
