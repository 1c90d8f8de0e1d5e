// Reachability probe on demand: the page never waits for a node; the button asks the server.
document.addEventListener("DOMContentLoaded", function () {
  var button = document.getElementById("probe");
  var out = document.getElementById("probe-result");
  if (!button || !out) { return; }
  button.addEventListener("click", function () {
    button.disabled = true;
    out.textContent = "…";
    fetch(button.getAttribute("data-url"), {headers: {"Accept": "application/json"}})
      .then(function (response) { return response.json(); })
      .then(function (r) {
        var text = r.reachable ? ("HTTP " + r.http_status + ", " + r.latency_ms + " ms") : ("✗ " + (r.message || r.error || ""));
        if (r.answer) { text += " · " + JSON.stringify(r.answer); }
        out.textContent = text;
        out.className = r.reachable && r.http_status === 200 ? "good" : "error";
        if (r.hint) {
          var hint = document.createElement("span");
          hint.className = "hint";
          hint.textContent = r.hint;
          out.appendChild(document.createElement("br"));
          out.appendChild(hint);
        }
      })
      .catch(function (e) { out.textContent = "✗ " + e; out.className = "error"; })
      .then(function () { button.disabled = false; });
  });
});
