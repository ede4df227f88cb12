// The browser device: LiteRT.js runs the shipped TFLite bundles; only i8 vectors go to /v1/search/batch.
import { loadLiteRt, loadAndCompile, Tensor } from "/app/static/vendor/litertjs/core.js";
import { FLOW, chooseObjects, cropWithMargin, decodeYolo, encodeI8, encodePixels, fitImage, l2normalize } from "/app/static/flow.js";

const $ = (id) => document.getElementById(id);
const state = { detector: null, embedder: null, info: null, seq: 0 };

function setStatus(text, st) {
  $("status").textContent = text;
  $("status").dataset.state = st;
}

async function compile(entry) {
  const model = await loadAndCompile(entry.url, { accelerator: "wasm" });
  const artifact = entry.manifest.artifacts.find((a) => a.file === entry.file);
  return { model, artifact, manifest: entry.manifest };
}

async function run(m, data) {
  const input = new Tensor(data, m.artifact.input.shape);
  const outputs = await m.model.run(input);
  input.delete();
  const out = outputs[0];
  const result = { data: out.toTypedArray().slice(), shape: out.type.layout.dimensions };
  for (const t of outputs) t.delete();
  return result;
}

// the photo -> HxWx3 uint8 RGB, upright per EXIF, no colour-profile conversion (as Pillow decodes it)
async function decodePhoto(blob) {
  const bitmap = await createImageBitmap(blob, { imageOrientation: "from-image", premultiplyAlpha: "none", colorSpaceConversion: "none" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  const rgb = new Uint8Array(bitmap.width * bitmap.height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
  return { img: { data: rgb, width: bitmap.width, height: bitmap.height }, bitmap };
}

async function embed(crop) {
  const spec = state.embedder.artifact.input;
  const [fitted] = fitImage(crop, spec);
  const out = await run(state.embedder, encodePixels(fitted, spec));
  const q = state.embedder.artifact.outputs[0].quantization;
  const raw = q ? Array.from(out.data, (v) => (v - q.zero_point) * q.scale) : out.data;
  return l2normalize(raw);
}

// the phone's flow on one photo: detect, choose, crop, embed, encode (shoplens.sdk.runtime.DeviceRuntime.process)
export async function processPhoto(blob) {
  const t0 = performance.now();
  const { img, bitmap } = await decodePhoto(blob);
  const timings = { decode: performance.now() - t0 };
  let regions = [];
  const choice = state.detector ? state.detector.manifest.detector.object_choice : null;
  if (state.detector) {
    const t = performance.now();
    const spec = state.detector.artifact.input;
    const [fitted, geo] = fitImage(img, spec);
    const out = await run(state.detector, encodePixels(fitted, spec));
    const dets = decodeYolo(out.data, out.shape, geo, state.detector.manifest.detector, state.detector.artifact.outputs[0]);
    timings.detect = performance.now() - t;
    regions = chooseObjects(dets, img.width * img.height, choice).map((d) => ({ ...d, source: "detector" }));
  }
  // the whole photo: searched too when the rule says so, and always when no box is left
  if (!regions.length || (choice && choice.search_whole_photo)) regions.push({ box: [0, 0, img.width, img.height], label: "", score: 0, source: "whole_image" });
  const t = performance.now();
  const objects = [];
  for (const r of regions) {
    const crop = r.source === "whole_image" ? img : cropWithMargin(img, r.box, choice.crop_margin);
    const vector = await embed(crop);
    objects.push({ ...r, vector, encoded: encodeI8(vector) });
  }
  timings.embed = performance.now() - t;
  return { objects, bitmap, timings, width: img.width, height: img.height };
}

// the detector's raw output for a photo (base64 of the encoded file -> base64 of the float32 output):
// benchmarks/runtimes.py compares it with PyTorch
export async function detectRaw(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const { img } = await decodePhoto(new Blob([bytes]));
  const spec = state.detector.artifact.input;
  const [fitted] = fitImage(img, spec);
  const out = await run(state.detector, encodePixels(fitted, spec));
  const raw = new Uint8Array(new Float32Array(out.data).buffer);
  let bin = "";
  for (let i = 0; i < raw.length; i += 0x8000) bin += String.fromCharCode.apply(null, raw.subarray(i, i + 0x8000));
  return btoa(bin);
}

export async function search(objects, topK) {
  const body = {
    model_id: state.embedder.manifest.embedder.model_id,
    encoding: FLOW.encoding,
    vectors: objects.map((o) => o.encoded),
    top_k: topK,
  };
  const headers = { "Content-Type": "application/json" };
  const key = $("key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  const res = await fetch("/v1/search/batch", { method: "POST", headers, body: JSON.stringify(body) });
  const json = await res.json();
  if (!res.ok) throw new Error(json.error ? `${json.error.code}: ${json.error.message}` : `HTTP ${res.status}`);
  return json;
}

function draw(result) {
  const canvas = $("canvas");
  const scale = Math.min(1, 640 / Math.max(result.width, result.height));
  canvas.width = Math.round(result.width * scale);
  canvas.height = Math.round(result.height * scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(result.bitmap, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 3;
  ctx.font = "16px sans-serif";
  result.objects.forEach((o, i) => {
    const [x1, y1, x2, y2] = o.box.map((v) => v * scale);
    ctx.strokeStyle = ["#e53935", "#1e88e5", "#43a047"][i % 3];
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = ctx.strokeStyle;
    ctx.fillText(`${i + 1} ${o.label}`, x1 + 4, y1 + 18);
  });
}

// catalog values are text (never HTML); thumbnails only for https image_urls (the contract's rule)
function showResults(result, response) {
  const root = $("results");
  root.replaceChildren();
  response.results.forEach((res, i) => {
    const o = result.objects[i];
    const box = document.createElement("div");
    box.className = "object";
    const h = document.createElement("h3");
    h.textContent = `${i + 1}. ${o.label || (o.source === "whole_image" ? "whole photo" : "object")}${o.score ? ` (${o.score.toFixed(2)})` : ""}`;
    const list = document.createElement("ul");
    list.className = "hits";
    for (const hit of res.hits) {
      const li = document.createElement("li");
      li.className = "hit";
      li.dataset.productId = hit.product_id;
      let thumb;
      if (hit.image_url && hit.image_url.startsWith("https://")) {
        thumb = document.createElement("img");
        thumb.src = hit.image_url;
        thumb.alt = hit.title || hit.product_id;
        thumb.referrerPolicy = "no-referrer";
      } else {
        thumb = document.createElement("div");
        thumb.className = "noimg";
        thumb.textContent = "no image";
      }
      const caption = document.createElement("div");
      caption.textContent = `${hit.title || hit.product_id} - ${hit.score.toFixed(3)}`;
      li.append(thumb, caption);
      list.append(li);
    }
    box.append(h, list);
    root.append(box);
  });
}

async function onPhoto(file) {
  const seq = ++state.seq;
  try {
    setStatus("Detecting and embedding in the page...", "working");
    const result = await processPhoto(file);
    draw(result);
    setStatus(`Searching (${result.objects.length} object(s), ${result.objects.reduce((n, o) => n + o.encoded.length, 0)} characters of vectors)...`, "working");
    const t = performance.now();
    const response = await search(result.objects, Number($("topk").value) || 5);
    result.timings.search_http = performance.now() - t;
    showResults(result, response);
    window.shoplensLast = {
      objects: result.objects.map(({ box, label, score, source, vector, encoded }) => ({ box, label, score, source, vector, encoded })),
      response, timings: result.timings, seq,
    };
    $("status").dataset.seq = String(seq);
    setStatus(`Done: detect ${Math.round(result.timings.detect || 0)} ms, embed ${Math.round(result.timings.embed)} ms, search ${Math.round(result.timings.search_http)} ms.`, "done");
  } catch (err) {
    console.error(err);
    window.shoplensLast = { error: String(err), seq };
    $("status").dataset.seq = String(seq);
    setStatus(`Error: ${err.message || err}`, "error");
  }
}

async function main() {
  try {
    const info = await (await fetch("/app/models.json")).json();
    if (!info.embedder) throw new Error(info.error ? info.error.message : "no embedder bundle served");
    await loadLiteRt("/app/static/vendor/litertjs/wasm/");
    state.embedder = await compile(info.embedder);
    if (info.detector) state.detector = await compile(info.detector);
    state.info = info;
    $("models").textContent = `Models: ${info.detector ? `${info.detector.bundle}/${info.detector.file} + ` : ""}${info.embedder.bundle}/${info.embedder.file} (model id ${info.embedder.manifest.embedder.model_id}), LiteRT.js on WebAssembly.`;
    $("key").value = sessionStorage.getItem("shoplens-key") || "";
    $("key").addEventListener("change", () => sessionStorage.setItem("shoplens-key", $("key").value));
    $("photo").disabled = false;
    $("photo").addEventListener("change", (e) => { if (e.target.files.length) onPhoto(e.target.files[0]); });
    window.shoplens = { processPhoto, search, detectRaw, FLOW };
    setStatus("Ready: pick or take a photo.", "ready");
  } catch (err) {
    console.error(err);
    setStatus(`Could not load the models: ${err.message || err}`, "error");
  }
}

main();
