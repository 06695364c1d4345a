/* hpcflow report: sort and filter the task table, zoom the timeline. Plain ES5, no library. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };

  var zoom = $("zoom");
  if (zoom) {
    zoom.addEventListener("input", function () {
      $("zoomable").style.width = (100 * Number(zoom.value)) + "%";
    });
  }

  var table = $("task-table");
  if (!table) { return; }
  var body = table.tBodies[0];
  var rows = Array.prototype.slice.call(body.rows);
  var heads = table.tHead.rows[0].cells;
  var ascending = {};

  function key(row, col, numeric) {
    var cell = row.cells[col];
    var text = cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent;
    if (!numeric) { return text.toLowerCase(); }
    var value = parseFloat(text);
    return isNaN(value) ? -Infinity : value;
  }

  function sortBy(col) {
    var numeric = heads[col].getAttribute("data-type") === "num";
    var up = ascending[col] = !ascending[col];
    var keyed = rows.map(function (row, index) { return [key(row, col, numeric), index, row]; });
    keyed.sort(function (a, b) {
      var order = a[0] < b[0] ? -1 : (a[0] > b[0] ? 1 : a[1] - b[1]);
      return up ? order : -order;
    });
    var fragment = document.createDocumentFragment();
    rows = keyed.map(function (k) { fragment.appendChild(k[2]); return k[2]; });
    body.appendChild(fragment);
    Array.prototype.forEach.call(heads, function (th, i) {
      th.className = i === col ? (up ? "asc" : "desc") : "";
    });
  }

  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () { sortBy(col); });
  });

  var text = $("filter"), state = $("state-filter"), crit = $("crit-only"), count = $("row-count");
  function applyFilter() {
    var needle = text.value.toLowerCase(), wanted = state.value, critOnly = crit.checked, shown = 0;
    rows.forEach(function (row) {
      var keep = (!needle || row.getAttribute("data-name").indexOf(needle) >= 0) &&
        (!wanted || row.getAttribute("data-state") === wanted) &&
        (!critOnly || row.classList.contains("crit"));
      row.hidden = !keep;
      if (keep) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " rows";
  }
  text.addEventListener("input", applyFilter);
  state.addEventListener("change", applyFilter);
  crit.addEventListener("change", applyFilter);

  /* A view can be linked: report.html#sort=duration&desc=1&state=failed&filter=sim&crit=1 */
  var params = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (pair) {
    var kv = pair.split("=");
    if (kv[0]) { params[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || ""); }
  });
  if (params.filter) { text.value = params.filter; }
  if (params.state) { state.value = params.state; }
  if (params.crit) { crit.checked = true; }
  Array.prototype.forEach.call(heads, function (th, col) {
    if (params.sort && th.textContent === params.sort) {
      sortBy(col);
      if (params.desc) { sortBy(col); }
    }
  });
  applyFilter();
}());
