"""The dashboard's stylesheet and script, served from `/static/` (no build step, no CDN).

The script only refreshes the panels (a GET of `/panels` every 2 s while the
tab is visible) and keeps the page's scroll position; every action is a plain
form POST carrying the page's CSRF token.
"""

CSS = """
:root { --bg:#f6f7f9; --card:#fff; --ink:#1d2330; --mute:#6b7385; --line:#e3e6ec;
  --ok:#1f8a4c; --warn:#b7791f; --bad:#c53030; --accent:#2b6cb0; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  background:var(--bg); color:var(--ink); }
header { background:#1d2330; color:#fff; padding:12px 24px; display:flex; gap:24px;
  align-items:baseline; flex-wrap:wrap; }
header h1 { font-size:18px; margin:0; }
header .sum { color:#cfd5e1; }
header a { color:#9ec5fe; }
main { padding:16px 24px; display:grid; gap:16px;
  grid-template-columns:repeat(auto-fit, minmax(560px, 1fr)); }
section { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:12px 16px; overflow:auto; }
section.wide { grid-column:1 / -1; }
h2 { font-size:15px; margin:0 0 8px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:4px 8px; border-bottom:1px solid var(--line);
  white-space:nowrap; }
th { color:var(--mute); font-weight:600; font-size:12px; text-transform:uppercase; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
.ok { color:var(--ok); } .warn { color:var(--warn); } .bad { color:var(--bad); }
.pill { display:inline-block; padding:0 8px; border-radius:10px; font-size:12px;
  border:1px solid currentColor; }
tr.error td { background:#fff1f1; }
.mute { color:var(--mute); }
.notes { grid-column:1 / -1; color:var(--warn); margin:0; }
button { font:inherit; padding:2px 10px; border-radius:4px; border:1px solid var(--accent);
  background:#fff; color:var(--accent); cursor:pointer; }
form { display:inline; margin:0; }
a { color:var(--accent); }
.waterfall td.bar { width:55%; position:relative; }
.waterfall .track { position:relative; height:14px; background:#f0f2f6; border-radius:3px; }
.waterfall .span { position:absolute; top:0; height:14px; border-radius:3px;
  min-width:2px; background:var(--accent); }
.waterfall .span.err { background:var(--bad); }
.waterfall .name { font-family:ui-monospace, monospace; font-size:12px; }
.svc-edge { background:#805ad5 !important; } .svc-orders { background:#2b6cb0 !important; }
.svc-inventory { background:#2f855a !important; } .svc-payments { background:#b7791f !important; }
.svc-users { background:#0987a0 !important; }
"""

JS = """
(function () {
  var panels = document.getElementById('panels');
  if (!panels) { return; }
  var stamp = document.getElementById('refreshed');
  function refresh() {
    if (document.hidden) { return; }
    fetch('/panels', {credentials: 'same-origin', cache: 'no-store'})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var y = window.scrollY;
        panels.innerHTML = html;
        window.scrollTo(0, y);
        if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
      })
      .catch(function () { if (stamp) { stamp.textContent = 'not answering'; } });
  }
  setInterval(refresh, 2000);
})();
"""
