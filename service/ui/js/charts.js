// Small SVG charts, drawn from plain data: horizontal bars (top-k), columns (per layer) and lines
// (over time). A chart library would be the larger file for three chart kinds; this one is read
// in a minute. Every bar carries data-value and a <title> (the hover text) with its exact number.

const SVG = "http://www.w3.org/2000/svg";

function el(name, attributes = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(width, height, label) {
  return el("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
}

// A round upper bound for an axis: 0.0734 -> 0.08, 413 -> 500.
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((s) => s * magnitude >= value);
  return step * magnitude;
}

export function formatNumber(value, digits = 3) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const size = Math.abs(value);
  if (size >= 1e9) return (value / 1e9).toFixed(2) + " G";
  if (size >= 1e6) return (value / 1e6).toFixed(2) + " M";
  if (size >= 1e4) return (value / 1e3).toFixed(1) + " k";
  if (size >= 100 || Number.isInteger(value)) return String(Math.round(value));
  return Number(value.toPrecision(digits)).toString();
}

// rows: [{label, value, title}] drawn as horizontal bars from 0 to max; the first row highlighted.
export function barChart(rows, { max = 1, format = formatNumber, label = "bar chart", highlightFirst = true } = {}) {
  const rowHeight = 24, labelWidth = 110, valueWidth = 70, width = 420;
  const barSpace = width - labelWidth - valueWidth;
  const svg = chart(width, rows.length * rowHeight + 4, label);
  rows.forEach((row, index) => {
    const y = index * rowHeight + 2;
    const length = Math.max(1, (barSpace * Math.min(row.value, max)) / max);
    svg.append(el("text", { x: labelWidth - 8, y: y + 15, "text-anchor": "end" }, row.label));
    const bar = el("rect", {
      class: index === 0 && highlightFirst ? "bar top" : "bar",
      x: labelWidth, y: y + 3, width: length, height: rowHeight - 8, rx: 2, "data-value": row.value,
    });
    bar.append(el("title", {}, row.title || `${row.label}: ${format(row.value)}`));
    svg.append(bar);
    svg.append(el("text", { x: labelWidth + length + 6, y: y + 15, class: "label" }, format(row.value)));
  });
  return svg;
}

// values: [{name, value}] as columns left to right (x: position, y: value), with a y axis.
export function columnChart(values, { xLabel = "", yLabel = "", format = formatNumber, label = "column chart", alt = false } = {}) {
  const width = 520, height = 220, left = 48, bottom = 36, top = 10, right = 8;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const max = niceMax(Math.max(0, ...values.map((v) => v.value)));
  const svg = chart(width, height, label);
  for (let tick = 0; tick <= 4; tick++) {
    const y = top + plotHeight - (plotHeight * tick) / 4;
    svg.append(el("line", { class: tick ? "grid" : "axis", x1: left, x2: width - right, y1: y, y2: y }));
    svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "label" }, format((max * tick) / 4)));
  }
  const slot = plotWidth / Math.max(1, values.length);
  values.forEach((item, index) => {
    const barHeight = (plotHeight * item.value) / max;
    const bar = el("rect", {
      class: alt ? "bar alt" : "bar",
      x: left + index * slot + slot * 0.15, y: top + plotHeight - barHeight,
      width: Math.max(1, slot * 0.7), height: Math.max(0, barHeight), "data-value": item.value,
    });
    bar.append(el("title", {}, `${item.name}: ${format(item.value)}`));
    svg.append(bar);
    if (values.length <= 24 || index % Math.ceil(values.length / 24) === 0) {
      svg.append(el("text", { x: left + (index + 0.5) * slot, y: top + plotHeight + 14, "text-anchor": "middle", class: "label" }, String(index)));
    }
  });
  svg.append(el("text", { x: left + plotWidth / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  svg.append(el("text", { x: 12, y: top + plotHeight / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${top + plotHeight / 2})` }, yLabel));
  return svg;
}

// series: [{name, points: [[x, y], ...]}] as lines over a shared x range; y from 0 to yMax.
export function lineChart(series, { yMax, xLabel = "", yLabel = "", label = "line chart", format = formatNumber } = {}) {
  const width = 520, height = 200, left = 48, bottom = 34, top = 10, right = 90;
  const plotWidth = width - left - right, plotHeight = height - top - bottom;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs, xMin + 1e-9) : 1;
  const top_ = yMax ?? niceMax(Math.max(0, ...ys));
  const svg = chart(width, height, label);
  for (let tick = 0; tick <= 4; tick++) {
    const y = top + plotHeight - (plotHeight * tick) / 4;
    svg.append(el("line", { class: tick ? "grid" : "axis", x1: left, x2: left + plotWidth, y1: y, y2: y }));
    svg.append(el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "label" }, format((top_ * tick) / 4)));
  }
  const px = (x) => left + (plotWidth * (x - xMin)) / (xMax - xMin || 1);
  const py = (y) => top + plotHeight - (plotHeight * Math.min(y, top_)) / top_;
  series.forEach((s, index) => {
    if (!s.points.length) return;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(" ");
    svg.append(el("path", { class: index ? "line alt" : "line", d, "data-points": s.points.length }));
    const last = s.points[s.points.length - 1];
    svg.append(el("text", { x: left + plotWidth + 6, y: py(last[1]) + 4, class: "label" }, s.name));
  });
  if (xs.length) {
    svg.append(el("text", { x: left, y: top + plotHeight + 14, "text-anchor": "start", class: "label" }, format(xMin)));
    svg.append(el("text", { x: left + plotWidth, y: top + plotHeight + 14, "text-anchor": "end", class: "label" }, format(xMax)));
  }
  svg.append(el("text", { x: left + plotWidth / 2, y: height - 4, "text-anchor": "middle" }, xLabel));
  svg.append(el("text", { x: 12, y: top + plotHeight / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${top + plotHeight / 2})` }, yLabel));
  return svg;
}
