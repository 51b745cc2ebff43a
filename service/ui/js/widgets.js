// Small pieces the views share: a model picker with its T range, a file drop zone, an error line.

export function fillModelSelect(select, stepsInput, models, emptyText) {
  select.replaceChildren();
  if (!models.length) {
    select.append(new Option(emptyText, ""));
    select.disabled = true;
    return;
  }
  for (const model of models) select.append(new Option(`${model.name}:${model.version}`, model.name));
  const applyRange = () => {
    const model = models.find((m) => m.name === select.value);
    stepsInput.min = model.timeSteps.min;
    stepsInput.max = model.timeSteps.max;
    stepsInput.value = model.timeSteps.default;
  };
  select.addEventListener("change", applyRange);
  applyRange();
}

// Calls handler(file) for a file dropped on `zone` or picked with `input`.
export function onFileDrop(zone, input, handler) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) handler(file);
  });
  input.addEventListener("change", () => {
    const [file] = input.files;
    if (file) handler(file);
    input.value = ""; // picking the same file again fires change again
  });
}

// Show `message` in the error element, or hide it when message is null.
export function showError(element, message) {
  element.hidden = message === null;
  element.textContent = message || "";
}

// An ApiError as one line: status, code, the server's message; a 401 says where the token goes.
export function describeError(exc) {
  const hint = exc.status === 401 ? " (enter the admin token on the Models tab; it is accepted as an API key)" : "";
  return `${exc.status || ""} ${exc.code || ""}: ${exc.message}${hint}`.trim();
}

// The early-exit options of an inference call: run step by step and answer at the first step where
// the top-1 probability of the accumulated output reaches the threshold (else all T steps).
export function exitOptions(checkbox, threshold) {
  return checkbox.checked ? { exit: "confidence", exit_threshold: threshold.value } : {};
}
