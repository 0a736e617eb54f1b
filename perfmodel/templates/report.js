// Tables of class 'sortable': a click on a header sorts the rows by that column (numbers by
// value, else as text; a second click reverses). Each cell's data-v holds its sort key.
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y), r;
        if (!isNaN(nx) && !isNaN(ny)) { r = nx - ny; } else { r = String(x).localeCompare(String(y)); }
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});

// Draws each Vega-Lite spec into the element of the same id (vega-embed, SVG). Without the Vega
// scripts the charts' "not rendered" notes stay; an error is added to its chart's box.
function embedCharts(specs) {
  if (typeof vegaEmbed === 'undefined') { return; }
  Object.keys(specs).forEach(function (id) {
    var el = document.getElementById(id);
    vegaEmbed(el, specs[id], {actions: false, renderer: 'svg'})
      .catch(function (e) { console.error(id, e); el.insertAdjacentHTML('beforeend', '<p class="pending">' + String(e) + '</p>'); });
  });
}
