// LZ4 frame decompression (the format of LZ4-compressed AEDAT4 packets), enough for the console
// to read a recording in the page. Spec: lz4_Frame_format.md and lz4_Block_format.md of the LZ4
// project. Checksums are skipped (the server checks the file itself when it decodes it).

const MAGIC = 0x184d2204;

// bytes: Uint8Array holding one LZ4 frame. Returns the decompressed Uint8Array.
export function lz4DecompressFrame(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 7 || view.getUint32(0, true) !== MAGIC) throw new Error("not an LZ4 frame");
  const flags = bytes[4];
  if (flags >> 6 !== 1) throw new Error("LZ4 frame of an unknown version");
  const blockChecksum = (flags >> 4) & 1;
  const hasContentSize = (flags >> 3) & 1;
  const hasDictionary = flags & 1;
  let pos = 6;
  let capacity = 1 << 16;
  if (hasContentSize) {
    capacity = Number(view.getBigUint64(pos, true));
    pos += 8;
  }
  if (hasDictionary) pos += 4;
  pos += 1; // header checksum
  const out = { data: new Uint8Array(Math.max(capacity, 16)), length: 0 };
  for (;;) {
    if (pos + 4 > bytes.length) throw new Error("LZ4 frame ends inside a block header");
    const header = view.getUint32(pos, true);
    pos += 4;
    if (header === 0) break; // end mark
    const size = header & 0x7fffffff;
    if (pos + size > bytes.length) throw new Error("LZ4 block runs past the end of the frame");
    const block = bytes.subarray(pos, pos + size);
    if (header & 0x80000000) append(out, block);
    else decompressBlock(block, out);
    pos += size + (blockChecksum ? 4 : 0);
  }
  return out.data.subarray(0, out.length);
}

function reserve(out, extra) {
  if (out.length + extra <= out.data.length) return;
  const grown = new Uint8Array(Math.max(out.data.length * 2, out.length + extra));
  grown.set(out.data.subarray(0, out.length));
  out.data = grown;
}

function append(out, bytes) {
  reserve(out, bytes.length);
  out.data.set(bytes, out.length);
  out.length += bytes.length;
}

// One LZ4 block: sequences of (literals, match); a match copies from output already written,
// possibly from earlier blocks of the same frame (linked blocks) and possibly overlapping itself.
function decompressBlock(block, out) {
  let pos = 0;
  while (pos < block.length) {
    const token = block[pos++];
    let literals = token >> 4;
    if (literals === 15) {
      let more;
      do {
        more = block[pos++];
        literals += more;
      } while (more === 255);
    }
    append(out, block.subarray(pos, pos + literals));
    pos += literals;
    if (pos >= block.length) break; // the last sequence has literals only
    const offset = block[pos] | (block[pos + 1] << 8);
    pos += 2;
    if (offset === 0 || offset > out.length) throw new Error("LZ4 block refers before its output");
    let length = (token & 15) + 4;
    if ((token & 15) === 15) {
      let more;
      do {
        more = block[pos++];
        length += more;
      } while (more === 255);
    }
    reserve(out, length);
    const data = out.data;
    let from = out.length - offset;
    for (let i = 0; i < length; i++) data[out.length++] = data[from++];
  }
}
