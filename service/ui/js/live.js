// Live: a stream session (WS /v1/models/{ref}/stream) fed from a recording replayed in real time.
// The page decodes the recording, fits it to the model's sensor, and sends the events whose
// timestamps have come due every tick as a small structured .npy array; the server answers one
// message per window, drawn as rolling predictions, confidence and spike rate over event time.

import { decodeRecording } from "./eventfiles.js";
import { fitToSensor } from "./frames.js";
import { lineChart } from "./charts.js";
import { adminToken, query } from "./api.js";
import { describeError, fillModelSelect, onFileDrop, showError } from "./widgets.js";

const TICK_MS = 20;
const ROWS_SHOWN = 12;

// events [i, j) of a fitted recording as a .npy of EVENT_DTYPE: x <u2, y <u2, t <i8, p u1 (13 bytes)
function npyChunk(events, i, j) {
  let header = `{'descr': [('x', '<u2'), ('y', '<u2'), ('t', '<i8'), ('p', '|u1')], 'fortran_order': False, 'shape': (${j - i},), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n";
  const buffer = new ArrayBuffer(10 + header.length + 13 * (j - i));
  const bytes = new Uint8Array(buffer);
  bytes.set([0x93, 78, 85, 77, 80, 89, 1, 0, header.length & 0xff, header.length >> 8]);
  for (let k = 0; k < header.length; k++) bytes[10 + k] = header.charCodeAt(k);
  const view = new DataView(buffer);
  for (let n = i, at = 10 + header.length; n < j; n++, at += 13) {
    view.setUint16(at, events.x[n], true);
    view.setUint16(at + 2, events.y[n], true);
    view.setBigInt64(at + 4, BigInt(Math.round(events.t[n])), true);
    view.setUint8(at + 12, events.p[n]);
  }
  return buffer;
}

// The fields of one "window" message that the view draws.
function readWindow(message) {
  const [best] = message.predictions || [];
  return {
    endUs: message.end_us,
    label: best ? best.label : "–",
    confidence: best ? best.probability : 0,
    spikeRate: message.telemetry ? message.telemetry.spike_rate : null,
    latencyMs: message.latency_ms,
    dropped: message.dropped_windows,
  };
}

export function initLive(models) {
  const eventModels = models.filter((m) => m.kind === "events");
  const select = document.getElementById("live-model");
  const steps = document.getElementById("live-steps");
  const windowMs = document.getElementById("live-window");
  const speed = document.getElementById("live-speed");
  const error = document.getElementById("live-error");
  const status = document.getElementById("live-status");
  const stop = document.getElementById("live-stop");
  fillModelSelect(select, steps, eventModels, "no event model is served");
  steps.value = 1; // the stream route's default: one step per window, the state carries the rest
  select.addEventListener("change", () => { steps.value = 1; });
  let session = null;

  stop.addEventListener("click", () => session && session.stop("stopped"));

  onFileDrop(document.getElementById("live-drop"), document.getElementById("live-file"), async (file) => {
    if (session) session.stop("replaced");
    const model = eventModels.find((m) => m.name === select.value);
    if (!model) return showError(error, "no event model is served");
    showError(error, null);
    let events;
    try {
      const recording = await decodeRecording(new Uint8Array(await file.arrayBuffer()), file.name);
      events = fitToSensor(recording, model.input, "scale");
    } catch (exc) {
      return showError(error, `cannot replay this file: ${exc.message}`);
    }
    session = replay(model, events, {
      windowMs: Number(windowMs.value), steps: Number(steps.value), speed: Number(speed.value),
      status, error, onEnd: () => { session = null; stop.disabled = true; },
    });
    stop.disabled = false;
  });
}

function replay(model, events, { windowMs, steps, speed, status, error, onEnd }) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  // browsers cannot set headers on a WebSocket: the tab's token, when there is one, goes as api_key
  const params = query({
    window_ms: windowMs, time_steps: steps, telemetry: "summary", top_k: 3, format: "npy",
    sensor_width: model.input.sensor_width, sensor_height: model.input.sensor_height, api_key: adminToken.get(),
  });
  const socket = new WebSocket(`${scheme}://${location.host}/v1/models/${encodeURIComponent(model.name)}/stream${params}`);
  const view = document.getElementById("view-live");
  const windows = [];
  let sent = 0, timer = null, started = 0, finished = false, mode = "";
  const first = events.count ? events.t[0] : 0;
  const progress = () => `${mode}sent ${sent.toLocaleString("en")} of ${events.count.toLocaleString("en")} events, ` +
    `${windows.length} windows answered`;

  function tick() {
    const due = first + (performance.now() - started) * 1000 * speed; // event time now due, in us
    let end = sent;
    while (end < events.count && events.t[end] <= due) end++;
    if (end > sent) {
      socket.send(npyChunk(events, sent, end));
      sent = end;
    }
    status.textContent = progress();
    if (sent >= events.count && !finished) {
      finished = true;
      clearInterval(timer);
      // answer the last, unfinished window too, then end the session
      socket.send(JSON.stringify({ flush: true }));
      socket.send(JSON.stringify({ close: true }));
    }
  }

  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      const steps = message.steps_per_window;
      mode = `${message.mode} state (${steps} step${steps === 1 ? "" : "s"} per ${message.window_us / 1000} ms window); `;
      started = performance.now();
      timer = setInterval(tick, TICK_MS);
    } else if (message.type === "window") {
      windows.push(readWindow(message));
      draw(windows);
      status.textContent = progress();
    } else if (message.type === "error") {
      showError(error, describeError({ code: message.error.code, message: message.error.message }));
    } else if (message.type === "closed") {
      status.textContent = `${progress()}; closed: ${message.reason}, ${message.dropped_windows} dropped`;
    }
  });
  socket.addEventListener("close", (event) => {
    clearInterval(timer);
    if (event.code !== 1000) showError(error, `the stream closed with ${event.code}: ${event.reason || "no reason given"}`);
    view.dataset.closed = String(event.code);
    onEnd();
  });
  view.dataset.closed = "";
  return {
    stop(reason) {
      clearInterval(timer);
      if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ close: true }));
      status.textContent = `${progress()}; ${reason}`;
    },
  };
}

function draw(windows) {
  const last = windows[windows.length - 1];
  document.getElementById("live-label").textContent = last.label;
  document.getElementById("live-confidence").textContent = `${(100 * last.confidence).toFixed(1)}%`;
  const seconds = (w) => (w.endUs - windows[0].endUs) / 1e6;
  document.getElementById("live-chart-confidence").replaceChildren(lineChart(
    [{ name: "top-1", points: windows.map((w) => [seconds(w), w.confidence]) }],
    { yMax: 1, xLabel: "event time (s)", yLabel: "confidence", label: "confidence over time" },
  ));
  document.getElementById("live-chart-rate").replaceChildren(lineChart(
    [{ name: "spike rate", points: windows.filter((w) => w.spikeRate !== null).map((w) => [seconds(w), w.spikeRate]) }],
    { xLabel: "event time (s)", yLabel: "spike rate", label: "spike rate over time" },
  ));
  const body = document.querySelector("#live-windows tbody");
  body.replaceChildren(...windows.slice(-ROWS_SHOWN).reverse().map((w) => {
    const row = document.createElement("tr");
    for (const value of [seconds(w).toFixed(3), w.label, `${(100 * w.confidence).toFixed(1)}%`,
      w.spikeRate === null ? "–" : w.spikeRate.toFixed(4), w.latencyMs === null ? "–" : w.latencyMs.toFixed(1), String(w.dropped)]) {
      row.append(Object.assign(document.createElement("td"), { textContent: value }));
    }
    return row;
  }));
}
