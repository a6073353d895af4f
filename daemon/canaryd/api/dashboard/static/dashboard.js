// canaryd's dashboard script: served by canaryd (/ui/dashboard.js), no dependencies.
//
// 1. Live updates: every few seconds it fetches the page it is on and swaps in the new
//    element #live. The server renders (and escapes) everything; this script never builds
//    markup from data, it only moves the server's nodes (a DOMParser document never runs
//    scripts) and sets textContent.
// 2. Actions (a target's page): the operator's token, typed into the page, is kept in this
//    tab's sessionStorage and sent only in the Authorization header of same-origin API calls.
//    It is never put in a URL and never logged. The API decides what a role may do; the page
//    shows its answer, a refusal included, as the API worded it.
"use strict";
(function () {
  var KEY = "canaryd.token";
  var PERIOD = 2000;
  var target = document.body.getAttribute("data-target") || "";
  var busy = false;

  function stamp(words) {
    var el = document.getElementById("updated");
    if (el) el.textContent = words;
  }

  function refresh() {
    if (busy || document.hidden) return Promise.resolve();
    busy = true;
    return fetch(location.pathname, { headers: { Accept: "text/html" }, cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (page) {
        var doc = new DOMParser().parseFromString(page, "text/html");
        var fresh = doc.getElementById("live");
        var old = document.getElementById("live");
        if (fresh && old) old.replaceWith(document.adoptNode(fresh));
        stamp("live, updated " + new Date().toLocaleTimeString());
      })
      .catch(function (e) {
        stamp("update failed (" + e.message + "); retrying");
      })
      .finally(function () {
        busy = false;
      });
  }

  function token() {
    try {
      return sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function showToken() {
    var el = document.getElementById("token-state");
    if (!el) return;
    el.textContent = token() ? "token set for this tab" : "no token";
    el.className = token() ? "set" : "";
  }

  function result(words, ok) {
    var el = document.getElementById("result");
    el.textContent = words;
    el.className = ok ? "done" : "refused";
  }

  var PATHS = {
    pause: ["pause", null],
    resume: ["resume", null],
    promote: ["promote", {}],
    "promote-full": ["promote", { full: true }],
  };

  function act(what, path, body) {
    if (!token()) {
      result(what + ": enter an API token first", false);
      return;
    }
    var url = "/api/v1/targets/" + encodeURIComponent(target) + "/" + path;
    fetch(url, {
      method: "POST",
      headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
      cache: "no-store",
    })
      .then(function (r) {
        return r.text().then(function (raw) {
          var doc = null;
          try {
            doc = JSON.parse(raw);
          } catch (e) {
            doc = null;
          }
          if (r.ok) {
            var phase = doc && doc.phase ? " (phase " + doc.phase + ")" : "";
            result(what + ": done" + phase, true);
          } else {
            var message = doc && doc.error ? doc.error.message : raw;
            result(what + ": refused, HTTP " + r.status + ": " + message, false);
          }
          return refresh();
        });
      })
      .catch(function (e) {
        result(what + ": " + e.message, false);
      });
  }

  function wire() {
    var actions = document.getElementById("actions");
    if (actions && target) {
      actions.hidden = false;
      document.getElementById("token-form").addEventListener("submit", function (ev) {
        ev.preventDefault();
        var field = document.getElementById("token");
        try {
          if (field.value) sessionStorage.setItem(KEY, field.value.trim());
        } catch (e) {
          result("this browser keeps no sessionStorage: the token cannot be kept", false);
        }
        field.value = "";
        showToken();
      });
      document.getElementById("forget").addEventListener("click", function () {
        try {
          sessionStorage.removeItem(KEY);
        } catch (e) {}
        showToken();
      });
      actions.querySelectorAll("button[data-action]").forEach(function (b) {
        b.addEventListener("click", function () {
          var p = PATHS[b.getAttribute("data-action")];
          act(b.getAttribute("data-action"), p[0], p[1]);
        });
      });
      actions.querySelectorAll("form[data-action]").forEach(function (f) {
        f.addEventListener("submit", function (ev) {
          ev.preventDefault();
          if (f.getAttribute("data-action") === "rollback") {
            var reason = f.elements.reason.value.trim();
            act("rollback", "rollback", reason ? { reason: reason } : {});
          } else {
            act("set-weight", "weight", { weight: parseInt(f.elements.weight.value, 10) });
          }
        });
      });
      showToken();
    }
    stamp("live");
    setInterval(refresh, PERIOD);
    document.addEventListener("visibilitychange", refresh);
  }

  wire();
})();
