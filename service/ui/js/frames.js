// From decoded events to the frames the network receives, with the server's own rules
// (service/decoding.fit_to_sensor, eventio/transforms.py, models/encoding.events_to_frames):
// fit the recording to the model's sensor (refuse, crop the centre, or scale), then count events
// per polarity in T bins. A movie player draws the frames, ON and OFF in two colours.

// recording: see eventfiles.js; input: the model's input spec; fit: "" | "crop" | "scale".
// Returns {x, y, t, p, count, warnings}: the events on the model's sensor. Throws with the
// server's reason when the sizes differ and fit is "".
export function fitToSensor(recording, input, fit) {
  const target = [input.sensor_width, input.sensor_height];
  let source = recording.sensor;
  const warnings = [];
  if (source === null) {
    let maxX = 0, maxY = 0;
    for (let i = 0; i < recording.count; i++) {
      maxX = Math.max(maxX, recording.x[i]);
      maxY = Math.max(maxY, recording.y[i]);
    }
    const extent = [maxX + 1, maxY + 1];
    if (extent[0] <= target[0] && extent[1] <= target[1]) return { ...recording, warnings };
    source = extent;
  }
  if (source[0] === target[0] && source[1] === target[1]) return { ...recording, warnings };
  const size = (s) => `${s[0]}x${s[1]}`;
  if (!fit) throw new Error(`the recording's sensor is ${size(source)} but the model takes ${size(target)}; choose crop or scale`);
  const keep = [];
  const x = [], y = [];
  const x0 = Math.floor((source[0] - target[0]) / 2), y0 = Math.floor((source[1] - target[1]) / 2);
  for (let i = 0; i < recording.count; i++) {
    if (fit === "crop") {
      const cx = recording.x[i] - x0, cy = recording.y[i] - y0;
      if (cx < 0 || cy < 0 || cx >= target[0] || cy >= target[1]) continue;
      x.push(cx); y.push(cy);
    } else {
      x.push(Math.floor((recording.x[i] * target[0]) / source[0]));
      y.push(Math.floor((recording.y[i] * target[1]) / source[1]));
    }
    keep.push(i);
  }
  warnings.push(fit === "crop"
    ? `cropped the ${size(source)} recording to its central ${size(target)}: ${keep.length} of ${recording.count} events kept`
    : `scaled the ${size(source)} recording to ${size(target)}`);
  return {
    x: Int32Array.from(x), y: Int32Array.from(y),
    t: Float64Array.from(keep, (i) => recording.t[i]), p: Uint8Array.from(keep, (i) => recording.p[i]),
    count: keep.length, warnings,
  };
}

// floor(a / b) for whole numbers below 2^53, exact (a float quotient can round up to the next integer).
function floorDivide(a, b) {
  let q = Math.floor(a / b);
  if (q * b > a) q -= 1;
  else if ((q + 1) * b <= a) q += 1;
  return q;
}

// Events -> Float32Array [T, 2, H, W]: channel 0 counts OFF events, channel 1 ON events.
export function eventsToFrames(events, input, timeSteps) {
  const width = input.sensor_width, height = input.sensor_height;
  const frameSize = 2 * width * height;
  const frames = new Float32Array(timeSteps * frameSize);
  if (!events.count) return frames;
  let first = Infinity, last = -Infinity;
  for (let i = 0; i < events.count; i++) {
    first = Math.min(first, events.t[i]);
    last = Math.max(last, events.t[i]);
  }
  const duration = last - first;
  for (let i = 0; i < events.count; i++) {
    let bin;
    if (input.binning === "time_window") bin = floorDivide(events.t[i] - first, input.time_window_us);
    else if (input.binning === "event_count") bin = floorDivide(i, input.event_count);
    else bin = duration === 0 ? 0 : Math.min(timeSteps - 1, floorDivide((events.t[i] - first) * timeSteps, duration));
    if (bin >= timeSteps) continue;
    frames[bin * frameSize + (events.p[i] * height + events.y[i]) * width + events.x[i]] += 1;
  }
  return frames;
}

// [{on, off}] events per frame.
export function frameTotals(frames, input, timeSteps) {
  const plane = input.sensor_width * input.sensor_height;
  const totals = [];
  for (let step = 0; step < timeSteps; step++) {
    let off = 0, on = 0;
    for (let i = 0; i < plane; i++) {
      off += frames[step * 2 * plane + i];
      on += frames[step * 2 * plane + plane + i];
    }
    totals.push({ on, off });
  }
  return totals;
}

// A looping movie of the frames on `canvas` (one canvas pixel a sensor pixel, scaled by CSS).
export function moviePlayer(canvas, slider, label, button) {
  const context = canvas.getContext("2d");
  let frames = null, input = null, steps = 0, step = 0, timer = null;
  const on = [240, 140, 0], off = [28, 126, 214]; // --on and --off of console.css

  function draw() {
    const width = input.sensor_width, height = input.sensor_height, plane = width * height;
    const image = context.createImageData(width, height);
    let peak = 1;
    for (let i = 0; i < 2 * plane; i++) peak = Math.max(peak, frames[step * 2 * plane + i]);
    for (let i = 0; i < plane; i++) {
      // brightness by count, relative to the busiest pixel of this frame (at least half bright)
      const offCount = frames[step * 2 * plane + i], onCount = frames[step * 2 * plane + plane + i];
      const a = offCount ? 0.5 + (0.5 * offCount) / peak : 0, b = onCount ? 0.5 + (0.5 * onCount) / peak : 0;
      for (let c = 0; c < 3; c++) image.data[4 * i + c] = Math.min(255, off[c] * a + on[c] * b);
      image.data[4 * i + 3] = 255;
    }
    context.putImageData(image, 0, 0);
    slider.value = step;
    label.textContent = `frame ${step + 1} of ${steps}`;
  }

  function play() {
    stop();
    timer = setInterval(() => { step = (step + 1) % steps; draw(); }, 400);
    button.textContent = "Pause";
  }
  function stop() {
    clearInterval(timer);
    timer = null;
    button.textContent = "Play";
  }
  button.addEventListener("click", () => (timer ? stop() : play()));
  slider.addEventListener("input", () => { stop(); step = Number(slider.value); draw(); });

  return {
    load(newFrames, newInput, timeSteps) {
      frames = newFrames; input = newInput; steps = timeSteps; step = 0;
      canvas.width = input.sensor_width;
      canvas.height = input.sensor_height;
      slider.max = steps - 1;
      draw();
      play();
    },
  };
}
