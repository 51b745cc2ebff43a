// Event recordings decoded in the page, so the console can show the frames the network receives:
// AEDAT 4.0 (uncompressed or LZ4; ZSTD where the browser's DecompressionStream has it), N-MNIST
// .bin and structured .npy. The same rules as the server's readers (eventio/): t in microseconds,
// p = 1 for ON and 0 for OFF, N-MNIST overflow records adding 2^13 us, -1/+1 polarities as 0/1.
//
// decodeRecording(bytes, fileName) -> {format, x, y, t, p (typed arrays [N]), count, sensor}
// where sensor is [width, height] when the file states it, else null.

import { lz4DecompressFrame } from "./lz4.js";

const AEDAT4_MAGIC = "#!AER-DAT4.0\r\n";
const NPY_MAGIC = "\x93NUMPY";

function startsWith(bytes, text) {
  if (bytes.length < text.length) return false;
  for (let i = 0; i < text.length; i++) if (bytes[i] !== text.charCodeAt(i)) return false;
  return true;
}

export async function decodeRecording(bytes, fileName = "") {
  if (startsWith(bytes, AEDAT4_MAGIC)) return decodeAedat4(bytes);
  if (startsWith(bytes, NPY_MAGIC)) return decodeNpy(bytes);
  if (/\.bin$/i.test(fileName) || (bytes.length && bytes.length % 5 === 0)) return decodeNmnist(bytes);
  throw new Error("not a recording the page can read (AEDAT4, N-MNIST .bin or structured .npy)");
}

function recording(format, count, sensor) {
  return {
    format, count, sensor,
    x: new Int32Array(count), y: new Int32Array(count), t: new Float64Array(count), p: new Uint8Array(count),
  };
}

// -- N-MNIST: 5-byte records (x, y, polarity bit + 23-bit big-endian timestamp) ------------------

function decodeNmnist(bytes) {
  if (bytes.length % 5) throw new Error(`an N-MNIST file is whole 5-byte records; ${bytes.length} bytes is not`);
  let events = 0;
  for (let i = 1; i < bytes.length; i += 5) if (bytes[i] !== 240) events++;
  const out = recording("nmnist", events, null);
  let overflow = 0, n = 0, fits = true;
  for (let i = 0; i < bytes.length; i += 5) {
    if (bytes[i + 1] === 240) overflow += 1 << 13; // shifts itself and every later record
    const stamp = ((bytes[i + 2] & 0x7f) << 16) | (bytes[i + 3] << 8) | bytes[i + 4];
    if (bytes[i + 1] === 240) continue;
    out.x[n] = bytes[i];
    out.y[n] = bytes[i + 1];
    out.t[n] = stamp + overflow;
    out.p[n] = bytes[i + 2] >> 7;
    fits &&= bytes[i] < 34 && bytes[i + 1] < 34;
    n++;
  }
  out.sensor = fits ? [34, 34] : null;
  return out;
}

// -- .npy: a 1-D structured array with fields x, y, t, p ---------------------------------------

function decodeNpy(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder("latin1").decode(bytes.subarray(start, start + headerLength));
  const shape = /'shape':\s*\((\d*),?\s*\)/.exec(header);
  if (!shape || !/'descr':\s*\[/.test(header)) {
    throw new Error(".npy events need a 1-D structured array with fields x, y, t, p");
  }
  // descr: [('x', '<u2'), ('y', '<u2'), ('t', '<i8'), ('p', 'u1')]; packed, in order ('' = padding)
  const fields = {};
  let offset = 0;
  for (const [, name, order, kind, size] of header.matchAll(/\('([^']*)',\s*'([<>|=]?)([biufV])(\d+)'\)/g)) {
    fields[name] = { offset, kind, size: Number(size), little: order !== ">" };
    offset += Number(size);
  }
  const itemSize = offset;
  for (const name of ["x", "y", "t", "p"]) if (!fields[name]) throw new Error(`.npy events lack the field '${name}'`);
  const count = Number(shape[1] || 0);
  const dataStart = start + headerLength;
  if (dataStart + count * itemSize > bytes.length) throw new Error(".npy file is shorter than its header says");
  const out = recording("npy", count, null);
  const read = (field, base) => readScalar(view, base + field.offset, field);
  let negative = false;
  for (let i = 0; i < count; i++) {
    const base = dataStart + i * itemSize;
    out.x[i] = read(fields.x, base);
    out.y[i] = read(fields.y, base);
    out.t[i] = read(fields.t, base);
    const p = read(fields.p, base);
    negative ||= p < 0;
    out.p[i] = p > 0 ? 1 : 0;
  }
  if (negative) out.warning = "polarity -1/+1 read as OFF/ON";
  return out;
}

function readScalar(view, pos, { kind, size, little }) {
  if (kind === "f") return size === 4 ? view.getFloat32(pos, little) : view.getFloat64(pos, little);
  if (kind === "b" || (kind === "u" && size === 1)) return view.getUint8(pos);
  if (kind === "i" && size === 1) return view.getInt8(pos);
  const name = `${kind === "u" ? "Uint" : "Int"}${size * 8}`;
  if (size === 8) return Number(view[`getBig${name}`](pos, little));
  return view[`get${name}`](pos, little);
}

// -- AEDAT 4.0: IOHeader flatbuffer + XML stream table, then packets of compressed flatbuffers --

function flatbuffer(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    view,
    // position of field `index` of the table at `table`, or null when absent
    field(table, index) {
      const vtable = table - view.getInt32(table, true);
      const entry = 4 + 2 * index;
      if (entry + 2 > view.getUint16(vtable, true)) return null;
      const offset = view.getUint16(vtable + entry, true);
      return offset ? table + offset : null;
    },
    // [start, count] of the vector whose uint32 offset sits at `pos`
    vector(pos) {
      const start = pos + view.getUint32(pos, true);
      return [start + 4, view.getUint32(start, true)];
    },
  };
}

async function decodeAedat4(bytes) {
  const file = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerStart = AEDAT4_MAGIC.length + 4;
  const dataStart = headerStart + file.getUint32(AEDAT4_MAGIC.length, true);
  const header = flatbuffer(bytes.subarray(headerStart, dataStart));
  const root = header.view.getUint32(0, true);
  const compressionPos = header.field(root, 0);
  const compression = compressionPos === null ? 0 : header.view.getInt32(compressionPos, true);
  const tablePos = header.field(root, 1);
  let dataEnd = tablePos === null ? -1 : Number(header.view.getBigInt64(tablePos, true));
  if (dataEnd < 0) dataEnd = bytes.length;
  const infoPos = header.field(root, 2);
  const [infoStart, infoLength] = infoPos === null ? [0, 0] : header.vector(infoPos);
  const streams = parseStreams(new TextDecoder().decode(bytes.subarray(headerStart + infoStart, headerStart + infoStart + infoLength)));
  const eventStream = streams.filter((s) => s.type === "EVTS").sort((a, b) => a.id - b.id)[0];
  if (!eventStream) throw new Error("the AEDAT4 file has no event stream");

  const packets = [];
  for (let pos = dataStart; pos + 8 <= dataEnd;) {
    const streamId = file.getInt32(pos, true);
    const size = file.getInt32(pos + 4, true);
    if (size < 0 || pos + 8 + size > dataEnd) throw new Error("AEDAT4 packet runs past the end of the file");
    if (streamId === eventStream.id) packets.push(await decompress(bytes.subarray(pos + 8, pos + 8 + size), compression));
    pos += 8 + size;
  }
  const decoded = packets.map(eventPacket);
  const count = decoded.reduce((sum, packet) => sum + packet.count, 0);
  const out = recording("aedat4", count, eventStream.size);
  let n = 0;
  for (const packet of decoded) {
    for (let i = 0; i < packet.count; i++, n++) {
      const at = packet.start + 16 * i; // struct Event { int64 t; int16 x; int16 y; bool on; } 16 bytes
      out.t[n] = Number(packet.view.getBigInt64(at, true));
      out.x[n] = packet.view.getInt16(at + 8, true);
      out.y[n] = packet.view.getInt16(at + 10, true);
      out.p[n] = packet.view.getUint8(at + 12) ? 1 : 0;
    }
  }
  return out;
}

function parseStreams(xml) {
  const doc = new DOMParser().parseFromString(xml.replace(/\0+$/, ""), "application/xml");
  const outInfo = [...doc.getElementsByTagName("node")].find((n) => n.getAttribute("name") === "outInfo");
  if (!outInfo) return [];
  const attr = (element, key) => [...element.children].find((c) => c.tagName === "attr" && c.getAttribute("key") === key)?.textContent.trim();
  return [...outInfo.children]
    .filter((n) => n.tagName === "node" && /^\d{1,9}$/.test(n.getAttribute("name")))
    .map((n) => {
      const info = [...n.children].find((c) => c.tagName === "node" && c.getAttribute("name") === "info");
      const width = info && Number(attr(info, "sizeX")), height = info && Number(attr(info, "sizeY"));
      return { id: Number(n.getAttribute("name")), type: attr(n, "typeIdentifier"), size: width && height ? [width, height] : null };
    });
}

async function decompress(body, compression) {
  if (compression === 0) return body;
  if (compression === 1 || compression === 2) return lz4DecompressFrame(body);
  // ZSTD: only where the browser offers it; the server decodes such files either way
  let stream;
  try {
    stream = new DecompressionStream("zstd");
  } catch {
    throw new Error("this browser cannot decompress ZSTD, so the frames are not shown; the server still classifies it");
  }
  const output = new Blob([body]).stream().pipeThrough(stream);
  return new Uint8Array(await new Response(output).arrayBuffer());
}

// One size-prefixed EventPacket flatbuffer: its vector of 16-byte events.
function eventPacket(buffer) {
  const identifier = String.fromCharCode(...buffer.subarray(8, 12));
  if (identifier !== "EVTS") throw new Error(`an AEDAT4 event packet is a '${identifier}' flatbuffer`);
  const fb = flatbuffer(buffer);
  const root = 4 + fb.view.getUint32(4, true);
  const elements = fb.field(root, 0);
  if (elements === null) return { view: fb.view, start: 0, count: 0 };
  const [start, count] = fb.vector(elements);
  return { view: fb.view, start, count };
}
