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
  if (st.size > MAX_MANIFEST_BYTES) throw new UserError(`${file}: larger than ${MAX_MANIFEST_BYTES} bytes`);
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
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
  if (m.verdict !== 'passed') {
    throw new UserError(`${bundle}: its check did not pass (verdict: ${m.verdict}); run 'bsconv-export check ${bundle}' to see why, and re-export`);
  }
  const artifacts = need(m.artifacts, Array.isArray, 'artifacts');
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

// An 8-bit PNG as { width, height, channels (1 grey | 3 RGB), pixels }: a palette is expanded,
// alpha dropped, 16-bit refused.
function readPng(file) {
  const { PNG } = require('pngjs');
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch {
    throw new UserError(`${file}: no such image file`);
  }
  if (buf.length < 24 || !buf.subarray(0, 8).equals(PNG_SIGNATURE)) {
    throw new UserError(`${file}: not a PNG image; the clients read 8-bit PNG files`);
  }
  // IHDR is the first chunk: width and height at bytes 16..23 (PNG spec 11.2.2), read to bound the decode.
  if (buf.readUInt32BE(16) > MAX_IMAGE_SIDE || buf.readUInt32BE(20) > MAX_IMAGE_SIDE) {
    throw new UserError(`${file}: larger than the ${MAX_IMAGE_SIDE} pixels per side a client decodes; scale it down first`);
  }
  let png;
  try {
    png = PNG.sync.read(buf, { skipRescale: true });
  } catch (e) {
    throw new UserError(`${file}: unreadable PNG (${e.message}); re-save it as an 8-bit PNG`);
  }
  if (png.depth === 16) throw new UserError(`${file}: a 16-bit PNG; save it with 8 bits per channel`);
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
