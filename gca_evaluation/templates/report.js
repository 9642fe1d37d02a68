// Sorting and filtering for the report's tables. Plain JavaScript, no downloads: works from disk.
(function () {
  "use strict";
  function cellValue(td) {
    if (!td) return "";
    var v = td.getAttribute("data-v");
    if (v !== null) return v === "" ? null : parseFloat(v);
    var t = td.textContent.trim();
    var n = parseFloat(t);
    return (/^[-+]?\d/.test(t) && !isNaN(n)) ? n : t.toLowerCase();
  }
  function compare(a, b) {
    if (a === b) return 0;
    if (a === null || a === "-" ) return 1;   // missing values last
    if (b === null || b === "-") return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b));
  }
  function sortBy(table, th) {
    var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var a = cellValue(r1.cells[idx]), b = cellValue(r2.cells[idx]);
      if (a === null && b === null) return 0;
      if (a === null) return 1;
      if (b === null) return -1;
      var c = compare(a, b);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function count(table) {
    var out = document.querySelector('[data-count-for="' + table.id + '"]');
    if (!out) return;
    var shown = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; }).length;
    out.textContent = shown + " of " + table.tBodies[0].rows.length + " cases";
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th) {
      th.title = th.title || "click to sort";
      th.addEventListener("click", function () { sortBy(table, th); });
    });
    if (table.id) count(table);
  });
  document.querySelectorAll("input.filter").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    if (!table) return;
    input.addEventListener("input", function () {
      var words = input.value.toLowerCase().split(/\s+/).filter(Boolean);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        var text = ((r.getAttribute("data-text") || "") + " " + r.textContent).toLowerCase();
        r.hidden = !words.every(function (w) { return text.indexOf(w) !== -1; });
      });
      count(table);
    });
  });
})();
