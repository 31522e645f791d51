// The console's one script: live updates over server-sent events (/live). A page refreshes the
// part an event is about: the approvals queue swaps in /approvals/list, other pages reload.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  var source = new EventSource("/live");
  var pending = null;

  function refreshQueue() {
    var queue = document.getElementById("queue");
    if (!queue) { return; }
    fetch(queue.getAttribute("data-refresh"), { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        queue.innerHTML = html;
        document.body.setAttribute("data-refreshed", String(Date.now()));
      });
  }

  function later(fn) {  // a burst of events refreshes once
    if (pending) { clearTimeout(pending); }
    pending = setTimeout(fn, 100);
  }

  source.addEventListener("open", function () { document.body.setAttribute("data-live", "open"); });
  source.addEventListener("approvals", function () {
    if (page === "approvals") { later(refreshQueue); }
  });
  ["services", "control"].forEach(function (topic) {
    source.addEventListener(topic, function () {
      if (page === topic) { later(function () { window.location.reload(); }); }
    });
  });
})();
