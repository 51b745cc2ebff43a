// The console's entry point: tabs (the URL hash names the view), the server's readiness, and the
// list of served models that the Classify and Events views pick from.

import { servedModels } from "./api.js";
import { initClassify } from "./classify.js";
import { initEvents } from "./events.js";
import { initLive } from "./live.js";
import { initModels } from "./models.js";

const VIEWS = {
  classify: initClassify,
  events: initEvents,
  live: initLive,
  models: initModels,
};
const started = new Set();
let models = null;

function show(name) {
  if (!(name in VIEWS)) name = "classify";
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== `view-${name}`;
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("active", link.dataset.view === name);
  if (!started.has(name) && models !== null) {
    started.add(name);
    VIEWS[name](models);
  }
}

// /readyz answers 503 while the default models load and warm up: wait for it, saying so.
async function waitForModels(status) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await servedModels();
    } catch (error) {
      if (error.status !== 503 && error.status !== 0) throw error;
      status.textContent = `waiting for the server: ${error.message}`;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
    }
  }
}

async function boot() {
  const status = document.getElementById("server-status");
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  show(location.hash.slice(1));
  try {
    models = await waitForModels(status);
    status.textContent = `ready: ${models.map((m) => `${m.name}:${m.version}`).join(", ") || "no models"}`;
  } catch (error) {
    status.textContent = error.status === 401
      ? "this server asks for a key: enter the admin token on the Models tab"
      : `the server answered: ${error.message}`;
    status.classList.add("error");
    models = [];
    // once a token is entered, start again with it (it stays in this tab's sessionStorage)
    if (error.status === 401) window.addEventListener("spikeserve:token", () => location.reload());
  }
  document.body.dataset.ready = "true"; // tests wait for this
  performance.mark("console-ready"); // bench/console.py times the load up to here
  show(location.hash.slice(1));
}

boot();
