// The gateway's public API, as the console calls it: same origin, JSON answers, one error shape.
//
// Every error answer of the API is {"error": {"code", "message"}} (the /v2 routes answer
// {"error": "<message>", "code"}); ApiError carries the status, code and message so a view can
// show the server's own words.

const TOKEN_KEY = "spikeserve.adminToken";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// The admin token lives in this tab's sessionStorage only: closing the tab forgets it.
export const adminToken = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || "",
  set: (token) => sessionStorage.setItem(TOKEN_KEY, token),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall back to the status line
  }
  const error = body && body.error;
  if (error && typeof error === "object") return new ApiError(response.status, error.code, error.message);
  if (typeof error === "string") return new ApiError(response.status, body.code || "error", error);
  return new ApiError(response.status, "http_" + response.status, `${response.status} ${response.statusText}`);
}

// call("GET", "/v1/models", {admin: true}) -> parsed JSON, or throws ApiError.
// body: a Blob/File/ArrayBuffer (sent raw with contentType), FormData, or a plain object (JSON).
// The tab's token goes with every call once entered: a server with SPIKESERVE_API_KEYS takes the
// admin token as an API key too, and one without keys ignores it on inference.
export async function call(method, path, { body, contentType, admin = false } = {}) {
  const headers = {};
  let payload = body;
  const token = adminToken.get();
  if (admin && !token) throw new ApiError(401, "unauthorized", "enter the admin token on the Models tab first");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined && !(body instanceof FormData) && !(body instanceof Blob) && !(body instanceof ArrayBuffer)) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (exc) {
    throw new ApiError(0, "network", `the server did not answer (${exc.message})`);
  }
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json();
}

// The models this server can answer now, with what each takes: public routes only
// (/readyz lists loaded versions; /v2/models/{name} gives labels, T range and the input spec).
export async function servedModels() {
  const ready = await call("GET", "/readyz");
  const names = [...new Set((ready.models || []).map((ref) => ref.slice(0, ref.lastIndexOf(":"))))];
  const metadata = await Promise.all(names.map((name) => call("GET", `/v2/models/${encodeURIComponent(name)}`)));
  return metadata.map((meta) => ({
    name: meta.name,
    version: meta.parameters.version,
    kind: meta.parameters.input_kind,
    input: meta.parameters.input,
    timeSteps: meta.parameters.time_steps,
    labels: meta.parameters.labels,
  }));
}

// Query string from an object, leaving out empty values.
export function query(params) {
  const parts = Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== null && value !== "")
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(value)}`);
  return parts.length ? `?${parts.join("&")}` : "";
}
