#!/usr/bin/env node
// bsconv-run (JavaScript): classify PNG images with a bsconv-export bundle's ONNX or ORT model on
// onnxruntime-node — the same InferenceSession API React Native apps use (onnxruntime-react-native).
//
//   run BUNDLE IMAGE.png... [--format onnx|ort|onnx-simplified|int8|fp16] [--threads N]
//
// Everything comes from the bundle (docs/bundle.md): manifest.json names the model file and its
// sha256 and says whether the bundle's check passed; the labels and the input spec come from the
// ONNX file's own metadata_props (read with protobufjs; onnxruntime's JS API exposes no custom
// metadata), or from the manifest for an .ort file. One JSON line per image goes to stdout:
//   {"image": "...", "label": "...", "index": 3, "logits": [...]}
// Any problem is one line on stderr and exit status 2.
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

const MAX_MANIFEST_BYTES = 16 << 20; // the same bound the Python side reads with
const MAX_IMAGE_SIDE = 8192; // larger images are refused before decoding
const MAX_PNG_BYTES = 256 << 20; // a PNG file larger than this is refused before it is read
const SCHEMA_VERSION = 4; // the manifest schema this client was written for
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

// The part of onnx.proto a client reads (field numbers as onnx.proto gives them): the model's
// metadata_props. protobufjs skips every other field (the graph, its weights) without decoding it.
const ONNX_METADATA_SCHEMA = `
syntax = "proto2";
package onnx;
message StringStringEntryProto { optional string key = 1; optional string value = 2; }
message ModelProto { repeated StringStringEntryProto metadata_props = 14; }
`;

class UserError extends Error {}

function usage() {
  return 'usage: run BUNDLE IMAGE.png... [--format onnx|ort|onnx-simplified|int8|fp16] [--threads N]';
}

function parseArgs(argv) {
  const args = { bundle: null, images: [], format: 'onnx', threads: 1 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') {
      process.stdout.write(`${usage()}\nClassify 8-bit PNG images with a bsconv-export bundle; one JSON line per image.\n`);
      process.exit(0);
    } else if (a === '--format' && i + 1 < argv.length) {
      args.format = argv[++i];
    } else if (a === '--threads' && i + 1 < argv.length) {
      args.threads = Number(argv[++i]);
      if (!Number.isInteger(args.threads) || args.threads < 1 || args.threads > 256) {
        throw new UserError('--threads takes a whole number from 1 to 256');
      }
    } else if (args.bundle === null) {
      args.bundle = a;
    } else {
      args.images.push(a);
    }
  }
  if (args.bundle === null || args.images.length === 0) throw new UserError(usage());
  return args;
}

// A regular file inside the bundle: no absolute path, no "..", no symbolic link on the way.
function inside(bundle, rel) {
  if (typeof rel !== 'string' || rel === '' || rel.startsWith('/') || rel.includes('\\')) {
    throw new UserError(`manifest.json: artifact path ${JSON.stringify(rel)} leaves the bundle; refusing it`);
  }
  let p = bundle;
  for (const part of rel.split('/')) {
    if (part === '' || part === '.' || part === '..') {
      throw new UserError(`manifest.json: artifact path ${JSON.stringify(rel)} leaves the bundle; refusing it`);
    }
    p = path.join(p, part);
    let st;
    try {
      st = fs.lstatSync(p);
    } catch {
      throw new UserError(`${p}: missing from the bundle; re-export it`);
    }
    if (st.isSymbolicLink()) throw new UserError(`${p}: a symbolic link; refusing to follow it out of the bundle`);
  }
  if (!fs.statSync(p).isFile()) throw new UserError(`${p}: not a regular file`);
  return p;
}

function readManifest(bundle) {
  const file = path.join(bundle, 'manifest.json');
  let st;
  try {
    st = fs.lstatSync(file);
  } catch {
    throw new UserError(`${bundle} is not a bundle: no manifest.json; create one with 'bsconv-export export'`);
  }
  if (!st.isFile()) throw new UserError(`${file}: not a regular file`);
  const bytes = readRegular(file, MAX_MANIFEST_BYTES, 'the manifest', 'no manifest');
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new UserError(`${file}: not valid JSON; re-export the bundle`);
  }
}

function need(value, check, what) {
  if (!check(value)) throw new UserError(`manifest.json: ${what} is missing or has the wrong type; re-export the bundle`);
  return value;
}

const isString = (v) => typeof v === 'string';
const isNumber = (v) => typeof v === 'number' && Number.isFinite(v);
const isNumbers = (v) => Array.isArray(v) && v.every(isNumber);
const isStrings = (v) => Array.isArray(v) && v.every(isString);

// The input spec the client feeds, checked field by field (from the file's metadata or the manifest).
function inputSpec(s, where) {
  if (s === null || typeof s !== 'object') throw new UserError(`${where}: no input spec; re-export the bundle`);
  const spec = {
    size: need(s.size, Number.isInteger, 'input_spec.size'),
    channels: need(s.channels, Number.isInteger, 'input_spec.channels'),
    color_order: need(s.color_order, isString, 'input_spec.color_order'),
    normalization: need(s.normalization, isString, 'input_spec.normalization'),
    value_range: need(s.value_range, (v) => isNumbers(v) && v.length === 2, 'input_spec.value_range'),
    mean: need(s.mean, isNumbers, 'input_spec.mean'),
    std: need(s.std, isNumbers, 'input_spec.std'),
  };
  if (spec.size < 1 || spec.size > 4096 || (spec.channels !== 1 && spec.channels !== 3)) {
    throw new UserError(`${where}: an input spec this client cannot feed (size ${spec.size}, ${spec.channels} channels)`);
  }
  if (spec.normalization === 'mean_std' && (spec.mean.length !== spec.channels || spec.std.length !== spec.channels)) {
    throw new UserError(`${where}: mean and std must list one number per channel`);
  }
  if (!spec.std.every((v) => v > 0)) throw new UserError(`${where}: input_spec.std must be positive numbers; re-export the bundle`);
  return spec;
}

// metadata_props of an ONNX file, as a plain object.
function onnxMetadata(bytes) {
  const protobuf = require('protobufjs');
  const ModelProto = protobuf.parse(ONNX_METADATA_SCHEMA, { keepCase: true }).root.lookupType('onnx.ModelProto');
  let model;
  try {
    model = ModelProto.decode(bytes);
  } catch (e) {
    throw new UserError(`the model file is not a readable ONNX protobuf (${e.message}); re-export the bundle`);
  }
  const out = {};
  for (const p of model.metadata_props) out[p.key] = p.value;
  return out;
}

function parseJsonKey(meta, key, file) {
  try {
    return JSON.parse(meta[key]);
  } catch {
    throw new UserError(`${file}: its metadata key '${key}' is missing or not JSON; re-export the bundle`);
  }
}

// manifest.json → the model file (hash-checked), its labels, input spec and batch; refuses a bundle
// whose check did not pass.
function openBundle(bundle, format) {
  const m = readManifest(bundle);
  const version = need(m.schema_version, Number.isInteger, 'schema_version');
  if (version > SCHEMA_VERSION) {
    throw new UserError(`manifest.json: schema ${version} is newer than this client's ${SCHEMA_VERSION}; update the client`);
  }
  // May this bundle run? The stored verdict says passed, and the rows agree (docs/bundle.md): no failed
  // artifact, a check whose results are all ok or skipped with at least one ok.
  const artifacts = need(m.artifacts, Array.isArray, 'artifacts');
  const results = m.check && Array.isArray(m.check.results) ? m.check.results : [];
  const rowsPass = m.passed === true && artifacts.length > 0 && artifacts.every((a) => a && a.status !== 'failed')
    && results.some((r) => r && r.status === 'ok') && results.every((r) => r && (r.status === 'ok' || r.status === 'skipped'));
  if (m.verdict !== 'passed' || !rowsPass) {
    const why = m.verdict === 'passed' ? ', but its rows disagree' : '';
    throw new UserError(`${bundle}: its check did not pass (verdict: ${m.verdict}${why}); run 'bsconv-export check ${bundle}' to see why, and re-export`);
  }
  const artifact = artifacts.find((a) => a && a.format === format && a.status === 'ok');
  if (!artifact) throw new UserError(`${bundle}: no ${format} model in the bundle; export it with --formats ${format}`);
  const file = inside(bundle, artifact.path);
  if (!/\.(onnx|ort)$/.test(file)) throw new UserError(`${file}: onnxruntime runs .onnx and .ort files; pick one with --format`);
  const bytes = fs.readFileSync(file);
  if (crypto.createHash('sha256').update(bytes).digest('hex') !== artifact.sha256) {
    throw new UserError(`${file}: changed since the export (its sha256 differs from the manifest's); re-export the bundle`);
  }
  const model = need(m.model, (v) => v !== null && typeof v === 'object', 'model');
  const exp = need(m.export, (v) => v !== null && typeof v === 'object', 'export');
  const shape = need(exp.input_shape, (v) => isNumbers(v) && v.length === 4, 'export.input_shape');
  let spec = inputSpec(model.input_spec, 'manifest.json');
  let labels = need(model.labels, isStrings, 'model.labels');
  let source = 'manifest.json';
  if (file.endsWith('.onnx')) {
    // The file carries its own contract: read it there, and refuse a file whose contract and the
    // manifest's disagree (one of them is not what was checked).
    const meta = onnxMetadata(bytes);
    const fileSpec = inputSpec(parseJsonKey(meta, 'input_spec', file), file);
    const fileLabels = parseJsonKey(meta, 'labels', file);
    if (JSON.stringify(fileLabels) !== JSON.stringify(labels) || JSON.stringify(fileSpec) !== JSON.stringify(spec)) {
      throw new UserError(`${file}: its metadata (labels, input spec) differs from manifest.json; re-export the bundle`);
    }
    spec = fileSpec;
    labels = fileLabels;
    source = path.basename(file);
  }
  const batch = exp.dynamic_batch === true ? 1 : shape[0];
  if (!Number.isInteger(batch) || batch < 1 || batch > 1024) throw new UserError('manifest.json: export.input_shape has a bad batch');
  return { file, bytes, spec, labels, batch, source };
}

// A regular file's bytes, opened without blocking (a FIFO is refused, never waited on), at most maxBytes.
function readRegular(file, maxBytes, what, missing) {
  let fd;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch (e) {
    if (e.code === 'ENOENT') throw new UserError(`${file}: ${missing}`);
    throw new UserError(`${file}: cannot open ${what} (${e.code})`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new UserError(`${file}: ${what} is not a regular file (a folder, pipe or device); pass a file`);
    if (st.size > maxBytes) throw new UserError(`${file}: ${what} is larger than ${maxBytes} bytes`);
    const buf = Buffer.alloc(st.size);
    let got = 0;
    while (got < st.size) {
      const n = fs.readSync(fd, buf, got, st.size - got, got);
      if (n <= 0) break;
      got += n;
    }
    return buf.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// The clients' PNG rule (docs/bundle.md, the pixel rule), on the file's bytes before any decoding: a regular
// file of at most MAX_PNG_BYTES, the signature, an IHDR of 1..8192 pixels per side at 8 bits (1, 2 and 4 too
// for grey and palette images), every chunk's CRC right. The same checks, in the same order, as
// exporter/predict.py's png_bytes and the C++ client's png_bytes. Returns the bytes, less a grey or RGB
// image's tRNS chunk (pngjs would blank the pixels it names; the rule drops transparency, keeping colour).
function pngBytes(file) {
  const buf = readRegular(file, MAX_PNG_BYTES, 'the image', 'no such image file');
  if (buf.length < 33 || !buf.subarray(0, 8).equals(PNG_SIGNATURE) || buf.toString('latin1', 12, 16) !== 'IHDR') {
    throw new UserError(`${file}: not a PNG image; the clients read 8-bit PNG files`);
  }
  const width = buf.readUInt32BE(16);
  const height = buf.readUInt32BE(20);
  const depth = buf[24];
  const colour = buf[25];
  if (width === 0 || height === 0) throw new UserError(`${file}: a PNG with no pixels (${width}x${height}); save a real image`);
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE) {
    throw new UserError(`${file}: ${width}x${height} is larger than the ${MAX_IMAGE_SIDE} pixels per side a client decodes; scale it down first`);
  }
  if (depth === 16) throw new UserError(`${file}: a 16-bit PNG; save it with 8 bits per channel`);
  const depths = { 0: [1, 2, 4, 8], 2: [8], 3: [1, 2, 4, 8], 4: [8], 6: [8] }[colour];
  if (!depths || !depths.includes(depth)) {
    throw new UserError(`${file}: not a PNG image the clients read (colour type ${colour}, ${depth} bits)`);
  }
  const kept = [buf.subarray(0, 8)];
  let pos = 8;
  while (pos < buf.length) {
    if (pos + 12 > buf.length) throw new UserError(`${file}: unreadable PNG (truncated); re-save it as an 8-bit PNG`);
    const end = pos + 8 + buf.readUInt32BE(pos);
    if (end + 4 > buf.length) throw new UserError(`${file}: unreadable PNG (truncated); re-save it as an 8-bit PNG`);
    const kind = buf.toString('latin1', pos + 4, pos + 8);
    if (crc32(buf.subarray(pos + 4, end)) !== buf.readUInt32BE(end)) {
      throw new UserError(`${file}: unreadable PNG (CRC error in its '${kind}' chunk); re-save it as an 8-bit PNG`);
    }
    if (!(kind === 'tRNS' && colour !== 3)) kept.push(buf.subarray(pos, end + 4));
    pos = end + 4;
    if (kind === 'IEND') break;
  }
  return Buffer.concat(kept);
}

// An 8-bit PNG as { width, height, channels (1 grey | 3 RGB), pixels }: a palette is expanded, alpha
// dropped, grey of 1, 2 or 4 bits scaled to 0..255; the file's bytes checked by pngBytes first.
function readPng(file) {
  const { PNG } = require('pngjs');
  const buf = pngBytes(file);
  let png;
  try {
    png = PNG.sync.read(buf);
  } catch (e) {
    throw new UserError(`${file}: unreadable PNG (${e.message}); re-save it as an 8-bit PNG`);
  }
  const grey = png.colorType === 0 || png.colorType === 4;
  const channels = grey ? 1 : 3;
  const pixels = new Uint8Array(png.width * png.height * channels);
  for (let i = 0; i < png.width * png.height; i++) {
    for (let c = 0; c < channels; c++) pixels[i * channels + c] = png.data[i * 4 + c]; // RGBA → grey or RGB
  }
  return { width: png.width, height: png.height, channels, pixels };
}

// Bilinear taps with half-pixel centres and no antialiasing (PyTorch's align_corners=False).
function taps(nIn, nOut) {
  const scale = nIn / nOut;
  const out = [];
  for (let i = 0; i < nOut; i++) {
    const src = Math.max((i + 0.5) * scale - 0.5, 0);
    const i0 = Math.floor(src);
    out.push({ i0, i1: Math.min(i0 + 1, nIn - 1), w: src - i0 });
  }
  return out;
}

// The contract's rule (docs/bundle.md), in float64 until the end: 0..255 → [0, 1]; resize to size;
// a grey image repeated to 3 channels; channels in color_order; [0, 1] onto value_range; for
// "mean_std", minus mean and over std per channel; NCHW float32, in row 0 of the model's batch.
function toInput(img, spec, batch) {
  if (spec.channels === 1 && img.channels !== 1) {
    throw new UserError('the model takes grey images (1 channel); this image has 3: convert it to greyscale');
  }
  const s = spec.size;
  const c = spec.channels;
  const ty = taps(img.height, s);
  const tx = taps(img.width, s);
  const [lo, hi] = spec.value_range;
  const x = new Float32Array(batch * c * s * s);
  const px = (y, xx, ch) => img.pixels[(y * img.width + xx) * img.channels + (img.channels === 1 ? 0 : ch)] / 255;
  for (let ch = 0; ch < c; ch++) {
    const srcCh = spec.color_order === 'BGR' && c === 3 ? 2 - ch : ch;
    for (let y = 0; y < s; y++) {
      const a = ty[y];
      for (let xx = 0; xx < s; xx++) {
        const b = tx[xx];
        const top = px(a.i0, b.i0, srcCh) * (1 - b.w) + px(a.i0, b.i1, srcCh) * b.w;
        const bottom = px(a.i1, b.i0, srcCh) * (1 - b.w) + px(a.i1, b.i1, srcCh) * b.w;
        let v = top * (1 - a.w) + bottom * a.w;
        v = lo + (hi - lo) * v;
        if (spec.normalization === 'mean_std') v = (v - spec.mean[ch]) / spec.std[ch];
        x[(ch * s + y) * s + xx] = v;
      }
    }
  }
  return x;
}

async function main(argv) {
  const args = parseArgs(argv);
  const b = openBundle(args.bundle, args.format);
  const inputs = args.images.map((f) => toInput(readPng(f), b.spec, b.batch)); // every image read before any runs
  const ort = require('onnxruntime-node');
  let session;
  try {
    session = await ort.InferenceSession.create(b.bytes, {
      intraOpNumThreads: args.threads,
      interOpNumThreads: 1,
      executionProviders: ['cpu'],
    });
  } catch (e) {
    throw new UserError(`${b.file}: onnxruntime could not load it (${String(e.message).split('\n')[0]}); re-export the bundle`);
  }
  if (!session.inputNames.includes('input') || !session.outputNames.includes('logits')) {
    throw new UserError(`${b.file}: inputs ${session.inputNames} / outputs ${session.outputNames} are not the contract's 'input' / 'logits'`);
  }
  const s = b.spec.size;
  for (let i = 0; i < inputs.length; i++) {
    const feeds = { input: new ort.Tensor('float32', inputs[i], [b.batch, b.spec.channels, s, s]) };
    const result = await session.run(feeds, ['logits']);
    const all = result.logits.data;
    const classes = all.length / b.batch;
    if (classes !== b.labels.length) {
      throw new UserError(`${b.file}: ${classes} logits, but the bundle lists ${b.labels.length} labels; re-export the bundle`);
    }
    const logits = Array.from(all.subarray(0, classes));
    let best = 0;
    for (let k = 1; k < classes; k++) if (logits[k] > logits[best]) best = k;
    process.stdout.write(`${JSON.stringify({ image: args.images[i], label: b.labels[best], index: best, logits })}\n`);
  }
}

main(process.argv.slice(2)).catch((e) => {
  if (e instanceof UserError) {
    process.stderr.write(`error: ${e.message}\n`);
    process.exit(2);
  }
  throw e;
});
