// Models: the registry (models, versions, aliases, manifests) and its management actions, through
// the admin routes of the API. The admin token is typed here and kept in this tab's sessionStorage.
// Without it, the view lists what the public routes tell: the models served now.

import { adminToken, call } from "./api.js";
import { showError } from "./widgets.js";

let served = [];

function node(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value);
  }
  element.append(...children);
  return element;
}

function table(headings, rows) {
  return node("table", {},
    node("thead", {}, node("tr", {}, ...headings.map((h) => node("th", {}, h)))),
    node("tbody", {}, ...rows));
}

const chips = (items) => node("span", { class: "chips" }, ...items.map((item) => node("span", {}, item)));

export function initModels(models) {
  served = models;
  const form = document.getElementById("token-form");
  const input = document.getElementById("admin-token");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) adminToken.set(input.value.trim());
    input.value = "";
    window.dispatchEvent(new Event("spikeserve:token"));
    refresh();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    adminToken.clear();
    refresh();
  });
  document.getElementById("upload-form").addEventListener("submit", upload);
  refresh();
}

async function refresh(selected) {
  const error = document.getElementById("models-error");
  const list = document.getElementById("models-list");
  const detail = document.getElementById("model-detail");
  const hasToken = Boolean(adminToken.get());
  document.getElementById("token-note").textContent = hasToken
    ? "Token set for this tab (sessionStorage); Forget removes it."
    : "Kept in this tab only (sessionStorage), sent only to this server.";
  document.getElementById("upload-card").hidden = !hasToken;
  showError(error, null);
  detail.replaceChildren();
  if (!hasToken) {
    list.replaceChildren(
      node("h2", {}, "Served now"),
      table(["model", "input", "time steps", "labels"], served.map((m) => node("tr", {},
        node("td", {}, `${m.name}:${m.version}`),
        node("td", {}, describeInput(m.input)),
        node("td", {}, `${m.timeSteps.default} (${m.timeSteps.min}..${m.timeSteps.max})`),
        node("td", {}, String(m.labels.length))))),
      node("p", { class: "muted" }, "Enter the admin token to see every version, alias and manifest, and to manage them."),
    );
    document.getElementById("workers").replaceChildren();
    return;
  }
  try {
    const { models } = await call("GET", "/v1/models", { admin: true });
    list.replaceChildren(
      node("h2", {}, "Registry"),
      table(["model", "versions", "default", "aliases", "architecture", "input", ""], models.map((m) => node("tr", { "data-model": m.name },
        node("td", {}, m.name),
        node("td", {}, m.versions.join(", ")),
        node("td", {}, String(m.default)),
        node("td", {}, chips(Object.entries(m.aliases).map(([alias, v]) => `@${alias} → ${v}`))),
        node("td", {}, m.architecture),
        node("td", {}, m.input_kind),
        node("td", {}, node("button", { type: "button", onclick: () => showModel(m.name) }, "Open"))))),
    );
    if (selected) await showModel(selected);
    await showWorkers();
  } catch (exc) {
    list.replaceChildren();
    showError(error, `${exc.status} ${exc.code}: ${exc.message}`);
  }
}

function describeInput(input) {
  if (input.kind === "image") return `image ${input.channels}x${input.height}x${input.width}`;
  return `events ${input.sensor_width}x${input.sensor_height}, ${input.binning}`;
}

async function showModel(name) {
  const detail = document.getElementById("model-detail");
  const error = document.getElementById("models-error");
  const model = await call("GET", `/v1/models/${encodeURIComponent(name)}`, { admin: true });
  const versions = model.versions.map((manifest) => manifest.version);
  const aliasRows = Object.entries(model.aliases).map(([alias, version]) => node("tr", {},
    node("td", {}, `@${alias}`), node("td", {}, String(version)),
    node("td", {}, confirmButton(`Remove @${alias}`, () => act("DELETE", `/v1/models/${enc(name)}/aliases/${enc(alias)}`, name)))));
  const aliasName = node("input", { placeholder: "alias", size: 12, "aria-label": "alias name" });
  const aliasVersion = node("select", { "aria-label": "alias version" }, ...versions.map((v) => new Option(String(v), String(v))));
  const setAlias = node("form", { class: "row", onsubmit: (event) => {
    event.preventDefault();
    if (!aliasName.value.trim()) return showError(error, "name the alias");
    act("PUT", `/v1/models/${enc(name)}/aliases/${enc(aliasName.value.trim())}`, name, { version: Number(aliasVersion.value) });
  } }, aliasName, aliasVersion, node("button", { type: "submit" }, "Set alias"));

  detail.replaceChildren(node("div", { class: "card", "data-detail": name },
    node("h2", {}, name),
    node("p", { class: "muted" }, `loaded in this process: ${model.loaded_versions.join(", ") || "none"}`),
    node("h3", {}, "Aliases"),
    table(["alias", "version", ""], aliasRows),
    setAlias,
    node("h3", {}, "Versions"),
    ...model.versions.map((manifest) => {
      const force = node("input", { type: "checkbox" });
      return node("details", { "data-version": manifest.version },
        node("summary", {}, `version ${manifest.version}: ${manifest.architecture}, T ${manifest.time_steps.default}, ` +
          `${manifest.created_at || ""} ${manifest.description ? "— " + manifest.description : ""}`),
        node("div", { class: "row" },
          confirmButton(`Delete version ${manifest.version}`, () =>
            act("DELETE", `/v1/models/${enc(name)}/versions/${manifest.version}${force.checked ? "?force=true" : ""}`, name)),
          node("label", {}, force, " even if an alias points at it")),
        node("pre", { class: "manifest" }, JSON.stringify(manifest, null, 2)));
    }),
  ));
}

const enc = encodeURIComponent;

// A destructive action asks once more in place (no browser dialog): the first click arms it.
function confirmButton(label, action) {
  const button = node("button", { type: "button", class: "danger" }, label);
  button.addEventListener("click", () => {
    if (button.dataset.armed) return action();
    button.dataset.armed = "true";
    button.textContent = `Really? ${label}`;
  });
  return button;
}

async function act(method, path, name, body) {
  const error = document.getElementById("models-error");
  try {
    await call(method, path, { admin: true, body });
    await refresh(name);
  } catch (exc) {
    showError(error, `${exc.status} ${exc.code}: ${exc.message}`);
  }
}

async function upload(event) {
  event.preventDefault();
  const error = document.getElementById("models-error");
  const form = new FormData();
  form.append("weights", document.getElementById("upload-weights").files[0]);
  form.append("manifest", document.getElementById("upload-manifest").value);
  try {
    const manifest = await call("POST", "/v1/models", { admin: true, body: form });
    await refresh(manifest.name);
  } catch (exc) {
    showError(error, `${exc.status} ${exc.code}: ${exc.message}`);
  }
}

async function showWorkers() {
  const { mode, workers } = await call("GET", "/v1/workers", { admin: true });
  document.getElementById("workers").replaceChildren(
    node("h2", {}, `Workers (${mode})`),
    table(["id", "device", "models", "batches"], workers.map((w) => node("tr", {},
      node("td", {}, w.id), node("td", {}, w.device || ""),
      node("td", {}, chips(w.models || w.loaded || [])), node("td", {}, String(w.batches ?? ""))))),
  );
}
