// The console's one script: live updates over server-sent events (/live). The page says which
// version of each topic (approvals, services, control) it shows (body[data-topics]); each message
// of the stream gives the latest versions. A newer version refreshes the part it is about: the
// approvals queue and the services table are swapped in from their fragment (the same copy for
// every client), the control page reloads. A burst of changes is one message. A page from an
// engine that has since restarted (another epoch) reloads.
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  var shown = JSON.parse(document.body.getAttribute("data-topics") || "{}");
  var parts = { approvals: "queue", services: "services-live" };  // topic -> swappable element
  var source = new EventSource("/live");
  var SPREAD_MS = 2000;

  function refresh(id) {
    var part = document.getElementById(id);
    fetch(part.getAttribute("data-refresh"), { credentials: "same-origin" })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        part.innerHTML = html;
        document.body.setAttribute("data-refreshed", String(Date.now()));
      });
  }

  source.addEventListener("open", function () { document.body.setAttribute("data-live", "open"); });
  source.addEventListener("change", function (e) {
    var message = JSON.parse(e.data), latest = message.topics;
    if (message.epoch !== document.body.getAttribute("data-epoch")) {  // the engine restarted
      window.location.reload();
      return;
    }
    Object.keys(latest).forEach(function (topic) {
      if (!(latest[topic] > (shown[topic] || 0))) { return; }
      shown[topic] = latest[topic];
      if (parts[topic] && document.getElementById(parts[topic])) {
        // Every viewer hears a change at the same moment: the services table, which is not
        // urgent, is fetched at a random moment of the next SPREAD_MS, not all at once.
        setTimeout(refresh, topic === "services" ? Math.random() * SPREAD_MS : 0, parts[topic]);
      } else if (topic === page) {
        window.location.reload();
      }
    });
  });
})();
