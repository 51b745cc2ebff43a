// Events: drop a recording; the page decodes it, bins it the way the server will and plays the
// frames, while the server classifies the same bytes at /v1/models/{ref}/events.

import { call, query } from "./api.js";
import { decodeRecording } from "./eventfiles.js";
import { eventsToFrames, fitToSensor, frameTotals, moviePlayer } from "./frames.js";
import { renderAnswer } from "./telemetry.js";
import { describeError, exitOptions, fillModelSelect, onFileDrop, showError } from "./widgets.js";

const FORMAT_BY_EXTENSION = { aedat4: "aedat4", bin: "nmnist", npy: "npy" };

export function initEvents(models) {
  const eventModels = models.filter((m) => m.kind === "events");
  const select = document.getElementById("events-model");
  const steps = document.getElementById("events-steps");
  const fit = document.getElementById("events-fit");
  const error = document.getElementById("events-error");
  const result = document.getElementById("events-result");
  const movieCard = document.getElementById("events-movie-card");
  const summary = document.getElementById("events-summary");
  const player = moviePlayer(
    document.getElementById("events-movie"),
    document.getElementById("events-frame"),
    document.getElementById("events-frame-label"),
    document.getElementById("events-play"),
  );
  fillModelSelect(select, steps, eventModels, "no event model is served");

  onFileDrop(document.getElementById("events-drop"), document.getElementById("events-file"), async (file) => {
    const model = eventModels.find((m) => m.name === select.value);
    if (!model) return showError(error, "no event model is served");
    showError(error, null);
    const bytes = new Uint8Array(await file.arrayBuffer());
    const timeSteps = Number(steps.value);
    const problems = [];
    let format = FORMAT_BY_EXTENSION[file.name.split(".").pop().toLowerCase()];

    // the page's view of the recording; when it cannot read it, the server's answer still counts
    try {
      const recording = await decodeRecording(bytes, file.name);
      format = recording.format;
      const events = fitToSensor(recording, model.input, fit.value);
      const frames = eventsToFrames(events, model.input, timeSteps);
      showCounts(frameTotals(frames, model.input, timeSteps));
      const seconds = duration(recording.t) / 1e6;
      summary.textContent = `${file.name}: ${recording.format}, ${recording.count.toLocaleString("en")} events` +
        ` over ${seconds.toFixed(3)} s` + (recording.sensor ? ` on a ${recording.sensor.join("x")} sensor` : "") +
        `; ${timeSteps} frames of ${model.input.sensor_width}x${model.input.sensor_height} (${model.input.binning})` +
        [recording.warning, ...events.warnings].filter(Boolean).map((w) => `; ${w}`).join("");
      player.load(frames, model.input, timeSteps);
      movieCard.hidden = false;
    } catch (exc) {
      movieCard.hidden = true;
      problems.push(`frames not shown: ${exc.message}`);
    }

    const path = `/v1/models/${encodeURIComponent(model.name)}/events` +
      query({
        telemetry: "layers", time_steps: timeSteps, fit: fit.value, format,
        ...exitOptions(document.getElementById("events-exit"), document.getElementById("events-exit-threshold")),
      });
    try {
      renderAnswer(result, await call("POST", path, { body: file, contentType: "application/octet-stream" }));
      result.hidden = false;
    } catch (exc) {
      result.hidden = true;
      problems.push(describeError(exc));
    }
    showError(error, problems.length ? problems.join("\n") : null);
  });
}

function duration(stamps) {
  let first = Infinity, last = -Infinity;
  for (const t of stamps) {
    first = Math.min(first, t);
    last = Math.max(last, t);
  }
  return stamps.length ? last - first : 0;
}

function showCounts(totals) {
  const body = document.querySelector("#events-counts tbody");
  body.replaceChildren(
    ...totals.map(({ on, off }, step) => {
      const row = document.createElement("tr");
      for (const value of [step + 1, on, off]) row.append(Object.assign(document.createElement("td"), { textContent: String(value) }));
      return row;
    }),
  );
}
