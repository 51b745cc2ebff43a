// The answer of /v1/models/{ref}/classify and /events, drawn: the prediction and top-k bars, the
// per-layer spike rates and spikes, synaptic operations and energy, time steps and timings.
// Shared by the Classify and Events views.

import { barChart, columnChart, formatNumber } from "./charts.js";

function node(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  element.append(...children);
  return element;
}

function card(title, ...children) {
  return node("div", { class: "card" }, node("h2", {}, title), ...children);
}

function stats(pairs) {
  const list = node("dl", { class: "stats" });
  for (const [term, value, id] of pairs) {
    list.append(node("dt", {}, term), node("dd", id ? { "data-stat": id } : {}, value));
  }
  return list;
}

const microjoules = (value) => `${formatNumber(value)} µJ`;

// Fill `container` with the drawn answer. answer: the JSON of a v1 inference route.
export function renderAnswer(container, answer) {
  container.replaceChildren();
  const [best] = answer.predictions;
  const steps = answer.time_steps_used ?? answer.time_steps;
  container.append(
    card(
      "Prediction",
      node("div", { class: "prediction", "data-stat": "label" }, best ? best.label : "–"),
      node("p", { class: "muted" }, `${answer.model.name}:${answer.model.version}, ` +
        `${best ? (100 * best.probability).toFixed(1) : "–"}% after ${steps} of ${answer.time_steps} time steps`),
      barChart(
        answer.predictions.map((p) => ({ label: p.label, value: p.probability, title: `${p.label}: ${(100 * p.probability).toFixed(2)}%` })),
        { max: 1, format: (v) => `${(100 * v).toFixed(1)}%`, label: "top-k probabilities" },
      ),
    ),
  );
  const telemetry = answer.telemetry;
  if (telemetry) {
    container.append(energyCard(telemetry, steps));
    if (telemetry.layers && telemetry.layers.length) container.append(...layerCards(telemetry.layers, steps));
    if (telemetry.synaptic_layers && telemetry.synaptic_layers.length) container.append(synapticCard(telemetry.synaptic_layers));
  }
  container.append(
    card("Timing", stats([
      ["queue", `${answer.timing_ms.queue.toFixed(1)} ms`],
      ["compute", `${answer.timing_ms.compute.toFixed(1)} ms`],
      ["total", `${answer.timing_ms.total.toFixed(1)} ms`],
      ["batch size", String(answer.batch_size)],
      ["request id", answer.request_id],
      ...(answer.warnings.length ? [["warnings", answer.warnings.join("; ")]] : []),
    ])),
  );
}

// SOPs and the energy estimate, beside the same network run as an ANN: every layer's MACs once
// (dense_macs), at 4.6 pJ each (ann_energy_uj), as the server reports them.
function energyCard(telemetry, steps) {
  const ratio = telemetry.ann_energy_uj > 0 ? telemetry.energy_uj / telemetry.ann_energy_uj : NaN;
  const chart = barChart(
    [
      { label: "spiking (est.)", value: telemetry.energy_uj },
      { label: "same net as ANN", value: telemetry.ann_energy_uj },
    ],
    {
      max: Math.max(telemetry.energy_uj, telemetry.ann_energy_uj) * 1.05 || 1,
      format: microjoules, label: "energy comparison", highlightFirst: false,
    },
  );
  return card(
    "Spikes, operations, energy",
    stats([
      ["time steps used", String(steps), "steps"],
      ["mean spike rate", telemetry.spike_rate.toFixed(4), "spike-rate"],
      ["spikes", formatNumber(telemetry.spikes), "spikes"],
      ["synaptic ops (exact; 0.9 pJ)", formatNumber(telemetry.synaptic_ops), "sops"],
      ["synaptic ops (nominal, papers')", formatNumber(telemetry.synaptic_ops_nominal), "sops-nominal"],
      ["MACs on real values (4.6 pJ)", formatNumber(telemetry.macs), "macs"],
      ["energy estimate", microjoules(telemetry.energy_uj), "energy"],
      ["same network as an ANN", `${microjoules(telemetry.ann_energy_uj)} (${formatNumber(telemetry.dense_macs)} MACs)`, "ann-energy"],
      ["spiking / ANN energy", Number.isNaN(ratio) ? "–" : ratio.toFixed(2), "energy-ratio"],
    ]),
    chart,
    node("p", { class: "muted" }, "45 nm figures: 4.6 pJ a MAC, 0.9 pJ an accumulate (Horowitz 2014); " +
      "the ANN runs every layer's MACs once, the spiking net over its time steps."),
  );
}

function layerCards(layers, steps) {
  const rates = layers.map((layer) => ({ name: layer.name, value: layer.spike_rate }));
  const spikes = layers.map((layer) => ({ name: layer.name, value: layer.spikes }));
  return [
    card(
      "Spike rate per layer",
      columnChart(rates, { xLabel: "spiking layer (input to output)", yLabel: "spike rate", label: "spike rate per layer" }),
      node("p", { class: "muted" }, `spikes / (neurons × ${steps} time steps); hover a bar for the layer's name`),
    ),
    card(
      "Spikes per layer",
      columnChart(spikes, { xLabel: "spiking layer (input to output)", yLabel: "spikes", label: "spikes per layer", alt: true }),
      node("p", { class: "muted" }, `summed over the ${steps} time steps (the API reports spikes per layer, not per step)`),
    ),
  ];
}

// Energy per synaptic layer (conv, linear, attention products), input to output: where it goes.
function synapticCard(layers) {
  const energy = layers.map((layer) => ({
    name: `${layer.name} (${layer.input === "real" ? "MACs on real values" : "events"}: ` +
      `${formatNumber(layer.input === "real" ? layer.macs : layer.synaptic_ops)} ops, ${(100 * layer.energy_share).toFixed(1)}%)`,
    value: layer.energy_uj,
  }));
  return card(
    "Energy per synaptic layer",
    columnChart(energy, { xLabel: "synaptic layer (input to output)", yLabel: "µJ", label: "energy per synaptic layer" }),
    node("p", { class: "muted" }, "layers fed by events count accumulates, layers fed by real values count MACs; hover a bar for its layer"),
  );
}
