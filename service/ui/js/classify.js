// Classify: draw a digit or drop an image, send it to /v1/models/{ref}/classify with per-layer
// telemetry, and draw the answer.

import { call, query } from "./api.js";
import { describeError, exitOptions, fillModelSelect, onFileDrop, showError } from "./widgets.js";
import { renderAnswer } from "./telemetry.js";

const BRUSH = 22; // px on the 280 px canvas: about an MNIST pen stroke once scaled to 28 px

export function initClassify(models) {
  const imageModels = models.filter((m) => m.kind === "image");
  const select = document.getElementById("classify-model");
  const steps = document.getElementById("classify-steps");
  const topK = document.getElementById("classify-topk");
  const preview = document.getElementById("classify-preview");
  const error = document.getElementById("classify-error");
  const result = document.getElementById("classify-result");
  const exit = document.getElementById("classify-exit");
  const exitThreshold = document.getElementById("classify-exit-threshold");
  const current = () => imageModels.find((m) => m.name === select.value);

  fillModelSelect(select, steps, imageModels, "no image model is served");
  const pad = drawingPad(document.getElementById("draw-canvas"));
  document.getElementById("draw-clear").addEventListener("click", () => pad.clear());

  async function classify(body, contentType) {
    const model = current();
    if (!model) return showError(error, "no image model is served");
    showError(error, null);
    const path = `/v1/models/${encodeURIComponent(model.name)}/classify` +
      query({ telemetry: "layers", top_k: topK.value, time_steps: steps.value, ...exitOptions(exit, exitThreshold) });
    try {
      const answer = await call("POST", path, { body, contentType });
      renderAnswer(result, answer);
      result.hidden = false;
    } catch (exc) {
      result.hidden = true;
      showError(error, describeError(exc));
    }
  }

  document.getElementById("draw-classify").addEventListener("click", async () => {
    const model = current();
    if (!model) return showError(error, "no image model is served");
    if (pad.isEmpty()) return showError(error, "draw a digit first");
    await classify(asModelInput(pad.canvas, model.input, preview), "application/x-npy");
  });

  onFileDrop(document.getElementById("classify-drop"), document.getElementById("classify-file"), async (file) => {
    const isNpy = file.name.toLowerCase().endsWith(".npy");
    const model = current();
    if (!isNpy && model) await previewImage(file, model.input, preview);
    await classify(file, isNpy ? "application/x-npy" : file.type || "application/octet-stream");
  });
}

// A black canvas to draw on in white with a mouse, pen or finger.
function drawingPad(canvas) {
  const context = canvas.getContext("2d");
  let drawing = false, inked = false;
  const clear = () => {
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
    inked = false;
  };
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [((event.clientX - box.left) * canvas.width) / box.width, ((event.clientY - box.top) * canvas.height) / box.height];
  };
  canvas.addEventListener("pointerdown", (event) => {
    drawing = true;
    canvas.setPointerCapture(event.pointerId);
    context.beginPath();
    context.moveTo(...at(event));
    context.lineTo(...at(event));
    stroke();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    context.lineTo(...at(event));
    stroke();
  });
  canvas.addEventListener("pointerup", () => { drawing = false; });
  function stroke() {
    context.strokeStyle = "#fff";
    context.lineWidth = BRUSH;
    context.lineCap = context.lineJoin = "round";
    context.stroke();
    inked = true;
  }
  clear();
  return { canvas, clear, isEmpty: () => !inked };
}

// The drawing as the model's input image, the way MNIST digits were made: the ink's bounding box
// scaled so its longer side fills 20/28 of the frame, centred. Drawn into `preview`, and sent as a
// uint8 .npy [C, H, W]: exactly these pixels reach the network (a PNG from a canvas is RGBA).
function asModelInput(canvas, input, preview) {
  const { width, height, channels } = input;
  const box = inkBox(canvas);
  const scale = (20 / 28) * Math.min(width / box.w, height / box.h);
  const w = box.w * scale, h = box.h * scale;
  preview.width = width;
  preview.height = height;
  const context = preview.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, width, height);
  context.imageSmoothingQuality = "high";
  context.drawImage(canvas, box.x, box.y, box.w, box.h, (width - w) / 2, (height - h) / 2, w, h);
  const rgba = context.getImageData(0, 0, width, height).data;
  const pixels = new Uint8Array(channels * width * height);
  for (let c = 0; c < channels; c++) {
    for (let i = 0; i < width * height; i++) pixels[c * width * height + i] = rgba[4 * i + Math.min(c, 2)];
  }
  return npyBlob(pixels, [channels, height, width]);
}

// A .npy (format 1.0) of uint8 values with `shape`: the magic, a padded header, the bytes.
function npyBlob(values, shape) {
  let header = `{'descr': '|u1', 'fortran_order': False, 'shape': (${shape.join(", ")}), }`;
  header += " ".repeat(63 - ((10 + header.length) % 64)) + "\n"; // data starts 64-byte aligned
  const head = new Uint8Array(10 + header.length);
  head.set([0x93, ..."NUMPY"].map((c) => (typeof c === "string" ? c.charCodeAt(0) : c)), 0);
  head.set([1, 0, header.length & 0xff, header.length >> 8], 6);
  for (let i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
  return new Blob([head, values]);
}

function inkBox(canvas) {
  const { data, width, height } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  let left = width, right = -1, top = height, bottom = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (data[(y * width + x) * 4] > 32) {
        left = Math.min(left, x); right = Math.max(right, x);
        top = Math.min(top, y); bottom = Math.max(bottom, y);
      }
    }
  }
  if (right < 0) return { x: 0, y: 0, w: width, h: height };
  const side = Math.max(right - left + 1, bottom - top + 1); // keep the aspect ratio: a "1" stays thin
  return { x: (left + right + 1 - side) / 2, y: (top + bottom + 1 - side) / 2, w: side, h: side };
}

async function previewImage(file, input, preview) {
  try {
    const bitmap = await createImageBitmap(file);
    preview.width = input.width;
    preview.height = input.height;
    preview.getContext("2d").drawImage(bitmap, 0, 0, input.width, input.height);
  } catch {
    // the browser cannot decode it; the server will say what is wrong with it
  }
}
