// The phone's flow, in the browser: the same arithmetic as the Python SDK (shoplens.sdk), step by step.
// Every model fact (sizes, resize rule, scaling, thresholds, class names, model id) and the
// object-choice rule (the detector manifest's detector.object_choice: min box, max objects, crop
// margin, ignored labels, whole photo) come from the bundle manifests served at /app/models.json.

export const FLOW = {
  encoding: "i8", // FlowOptions.encoding
};

const f32 = Math.fround;

// numpy's rint: round half to even
export function rint(v) {
  const r = Math.round(v);
  return (Math.abs(v % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// ---- resizing -------------------------------------------------------------------------------

// OpenCV INTER_LINEAR (half-pixel centres, no antialiasing), as shoplens.sdk.preprocess.resize_bilinear
function linearTaps(src, dst) {
  const scale = src / dst;
  const i0 = new Int32Array(dst), i1 = new Int32Array(dst), frac = new Float32Array(dst);
  for (let d = 0; d < dst; d++) {
    let pos = (d + 0.5) * scale - 0.5;
    if (pos < 0) pos = 0;
    let a = Math.floor(pos);
    frac[d] = pos - a;
    a = Math.min(a, src - 1);
    i0[d] = a;
    i1[d] = Math.min(a + 1, src - 1);
  }
  return [i0, i1, frac];
}

export function resizeBilinear(img, newH, newW) {
  const { data, width: w, height: h } = img;
  if (w === newW && h === newH) return { data: data.slice(), width: w, height: h };
  const [y0, y1, fy] = linearTaps(h, newH);
  const [x0, x1, fx] = linearTaps(w, newW);
  const out = new Uint8Array(newH * newW * 3);
  for (let y = 0; y < newH; y++) {
    const r0 = y0[y] * w * 3, r1 = y1[y] * w * 3, wy = fy[y];
    for (let x = 0; x < newW; x++) {
      const a = x0[x] * 3, b = x1[x] * 3, wx = fx[x];
      for (let c = 0; c < 3; c++) {
        const top = f32(f32(data[r0 + a + c] * f32(1 - wx)) + f32(data[r0 + b + c] * wx));
        const bot = f32(f32(data[r1 + a + c] * f32(1 - wx)) + f32(data[r1 + b + c] * wx));
        const v = f32(f32(top * f32(1 - wy)) + f32(bot * wy));
        out[(y * newW + x) * 3 + c] = Math.min(255, Math.max(0, rint(v)));
      }
    }
  }
  return { data: out, width: newW, height: newH };
}

// Pillow's Image.resize(BILINEAR): antialiased when shrinking (support grows with the scale),
// 22-bit fixed-point coefficients, horizontal pass then vertical, as shoplens.sdk.tensors.resize_pil
const PRECISION_BITS = 32 - 8 - 2;
function pilCoeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const bounds = [], coeffs = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    const k = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w;
      ww += w;
    }
    const kk = new Array(xmax);
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? k[x] / ww : k[x];
      kk[x] = v < 0 ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS)) : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    bounds.push([xmin, xmax]);
    coeffs.push(kk);
  }
  return [bounds, coeffs];
}

const clip8 = (ss) => { const v = Math.floor(ss / (1 << PRECISION_BITS)); return v < 0 ? 0 : v > 255 ? 255 : v; };

export function resizePil(img, newH, newW) {
  let { data, width: w, height: h } = img;
  if (w === newW && h === newH) return { data, width: w, height: h };
  if (newW !== w) {
    const [bounds, coeffs] = pilCoeffs(w, newW);
    const out = new Uint8Array(h * newW * 3);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < newW; x++) {
        const [xmin, xmax] = bounds[x], k = coeffs[x];
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < xmax; i++) ss += data[(y * w + xmin + i) * 3 + c] * k[i];
          out[(y * newW + x) * 3 + c] = clip8(ss);
        }
      }
    }
    data = out; w = newW;
  }
  if (newH !== h) {
    const [bounds, coeffs] = pilCoeffs(h, newH);
    const out = new Uint8Array(newH * w * 3);
    for (let y = 0; y < newH; y++) {
      const [ymin, ymax] = bounds[y], k = coeffs[y];
      for (let x = 0; x < w; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let i = 0; i < ymax; i++) ss += data[((ymin + i) * w + x) * 3 + c] * k[i];
          out[(y * w + x) * 3 + c] = clip8(ss);
        }
      }
    }
    data = out; h = newH;
  }
  return { data, width: w, height: h };
}

// ultralytics' LetterBox(auto=False, center=True, scaleup=True), as shoplens.sdk.preprocess.letterbox
export function letterbox(img, inH, inW, padValue) {
  const r = Math.min(inH / img.height, inW / img.width);
  const newW = Math.max(Math.round(img.width * r), 1), newH = Math.max(Math.round(img.height * r), 1);
  const dw = (inW - newW) / 2, dh = (inH - newH) / 2;
  const geo = { origH: img.height, origW: img.width, inputH: inH, inputW: inW, gainX: newW / img.width,
    gainY: newH / img.height, padX: Math.round(dw - 0.1), padY: Math.round(dh - 0.1) };
  const resized = resizeBilinear(img, newH, newW);
  const out = new Uint8Array(inH * inW * 3).fill(padValue);
  for (let y = 0; y < newH; y++) {
    out.set(resized.data.subarray(y * newW * 3, (y + 1) * newW * 3), ((y + geo.padY) * inW + geo.padX) * 3);
  }
  return [{ data: out, width: inW, height: inH }, geo];
}

// ---- tensors ---------------------------------------------------------------------------------

// the manifest's input rule: resize, then value = (pixel * scale - mean[c]) / std[c], dtype, layout
export function fitImage(img, spec) {
  const [h, w] = spec.layout === "NCHW" ? [spec.shape[2], spec.shape[3]] : [spec.shape[1], spec.shape[2]];
  if (spec.resize === "letterbox") return letterbox(img, h, w, spec.pad_value);
  if (spec.resize === "stretch") return [resizePil(img, h, w), null];
  throw new Error(`resize rule ${spec.resize} is not implemented in the page`);
}

export function encodePixels(fitted, spec) {
  if (spec.color_order !== "RGB") throw new Error(`colour order ${spec.color_order} is not implemented in the page`);
  if (spec.quantization) throw new Error("quantised inputs are not implemented in the page");
  const { data, width: w, height: h } = fitted;
  const n = w * h;
  const identity = spec.scale === 1 && spec.mean.every((m) => m === 0) && spec.std.every((s) => s === 1);
  let out;
  if (spec.dtype === "uint8") {
    if (!identity) throw new Error("a uint8 input with scaling is not implemented in the page");
    out = new Uint8Array(n * 3);
  } else if (spec.dtype === "float32") {
    out = new Float32Array(n * 3);
  } else {
    throw new Error(`input dtype ${spec.dtype} is not implemented in the page`);
  }
  const mean = spec.mean.map(f32), std = spec.std.map(f32), scale = f32(spec.scale);
  for (let i = 0; i < n; i++) {
    for (let c = 0; c < 3; c++) {
      const p = data[i * 3 + c];
      const v = spec.dtype === "uint8" ? p : f32(f32(f32(p * scale) - mean[c]) / std[c]);
      out[spec.layout === "NCHW" ? c * n + i : i * 3 + c] = v;
    }
  }
  return out;
}

// ---- YOLO decoding (shoplens.sdk.yolo_decode) -------------------------------------------------

function dequantize(raw, q) {
  if (!q) return raw;
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = f32((raw[i] - q.zero_point) * q.scale);
  return out;
}

function nms(boxes, scores, iouThreshold) {
  let order = scores.map((s, i) => i).sort((a, b) => scores[b] - scores[a] || a - b);
  const area = boxes.map((b) => Math.max(b[2] - b[0], 0) * Math.max(b[3] - b[1], 0));
  const keep = [];
  while (order.length) {
    const i = order[0];
    keep.push(i);
    order = order.slice(1).filter((j) => {
      const w = Math.max(Math.min(boxes[i][2], boxes[j][2]) - Math.max(boxes[i][0], boxes[j][0]), 0);
      const h = Math.max(Math.min(boxes[i][3], boxes[j][3]) - Math.max(boxes[i][1], boxes[j][1]), 0);
      const inter = w * h, union = area[i] + area[j] - inter;
      return (union > 0 ? inter / union : 0) <= iouThreshold;
    });
  }
  return keep;
}

export function decodeYolo(raw, shape, geo, det, outputSpec) {
  const x = dequantize(raw, outputSpec.quantization);
  const nc = det.class_names.length;
  const n = shape[shape.length - 1];
  if (shape[shape.length - 2] !== 4 + nc) throw new Error(`expected [1, ${4 + nc}, N], got [${shape}]`);
  const cand = [];
  for (let j = 0; j < n; j++) {
    let best = -Infinity, cls = 0;
    for (let c = 0; c < nc; c++) {
      const s = x[(4 + c) * n + j];
      if (s > best) { best = s; cls = c; }
    }
    if (best > det.conf_threshold) cand.push([j, best, cls]);
  }
  const sx = det.boxes_normalized ? geo.inputW : 1, sy = det.boxes_normalized ? geo.inputH : 1;
  const boxes = cand.map(([j]) => {
    const cx = f32(x[j] * sx), cy = f32(x[n + j] * sy), w = f32(x[2 * n + j] * sx), h = f32(x[3 * n + j] * sy);
    const hw = f32(w / 2), hh = f32(h / 2);
    return [f32(cx - hw), f32(cy - hh), f32(cx + hw), f32(cy + hh)];
  });
  const scores = cand.map((c) => c[1]);
  const classes = cand.map((c) => c[2]);
  // class-aware NMS: offset each class's boxes apart (as torchvision / ultralytics)
  let keep = [];
  if (boxes.length) {
    let lo = Infinity, hi = -Infinity;
    for (const b of boxes) for (const v of b) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const span = (hi - lo) + 1.0;
    const shifted = boxes.map((b, i) => b.map((v) => v + classes[i] * span));
    keep = nms(shifted, scores, det.iou_threshold).slice(0, det.max_detections);
  }
  return keep.map((i) => {
    const b = boxes[i];
    const ux = (v) => Math.min(Math.max(f32(f32(v - geo.padX) / f32(geo.gainX)), 0), geo.origW);
    const uy = (v) => Math.min(Math.max(f32(f32(v - geo.padY) / f32(geo.gainY)), 0), geo.origH);
    return { box: [ux(b[0]), uy(b[1]), ux(b[2]), uy(b[3])], score: scores[i], classId: classes[i], label: det.class_names[classes[i]] };
  });
}

// ---- choosing, cropping, encoding (shoplens.sdk.runtime, shoplens.contract.codecs) -----------

// the overlap of two xyxy boxes as a share of the smaller one (shoplens.sdk.yolo_decode.box_overlap)
export function boxOverlap(a, b) {
  const inter = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0])) * Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const smaller = Math.min(Math.max(0, a[2] - a[0]) * Math.max(0, a[3] - a[1]), Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]));
  return smaller > 0 ? inter / smaller : 0;
}

// choice: the detector manifest's object_choice (shoplens.sdk.runtime.choose_objects / plan_regions):
// ranked by score x area, a box is skipped when it overlaps a kept one by more than max_overlap
export function chooseObjects(dets, imageArea, choice) {
  const ranked = dets
    .map((d, i) => ({ d, i, area: f32(f32(d.box[2] - d.box[0]) * f32(d.box[3] - d.box[1])) }))
    .filter(({ d, area }) => area >= choice.min_box_fraction * imageArea && !choice.ignore_labels.includes(d.label))
    .sort((a, b) => (b.d.score * b.area) - (a.d.score * a.area) || a.i - b.i);
  const kept = [];
  for (const { d } of ranked) {
    if (kept.length === choice.max_objects) break;
    if (kept.every((k) => boxOverlap(k.box, d.box) <= choice.max_overlap)) kept.push(d);
  }
  return kept;
}

export function cropWithMargin(img, box, margin) {
  const [x1, y1, x2, y2] = box;
  const mx = (x2 - x1) * margin, my = (y2 - y1) * margin;
  const left = Math.max(0, Math.floor(x1 - mx)), top = Math.max(0, Math.floor(y1 - my));
  const right = Math.min(img.width, Math.ceil(x2 + mx)), bottom = Math.min(img.height, Math.ceil(y2 + my));
  if (right - left < 2 || bottom - top < 2) throw new Error(`box ${box} is empty inside the photo`);
  const w = right - left, h = bottom - top, out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    out.set(img.data.subarray(((top + y) * img.width + left) * 3, ((top + y) * img.width + right) * 3), y * w * 3);
  }
  return { data: out, width: w, height: h };
}

export function l2normalize(v) {
  let s = 0;
  for (const x of v) s += x * x;
  const n = Math.sqrt(s);
  return Array.from(v, (x) => x / n);
}

// i8 (docs/protocol.md): unit vector, the largest |component| -> 127, round half to even,
// clamp to -127..127, little-endian bytes, standard base64 with padding
export function encodeI8(vector) {
  const unit = l2normalize(vector);
  let peak = 0;
  for (const x of unit) peak = Math.max(peak, Math.abs(x));
  const q = new Int8Array(unit.length);
  for (let i = 0; i < unit.length; i++) q[i] = Math.min(127, Math.max(-127, rint(unit[i] * (127.0 / peak))));
  let bin = "";
  for (const b of new Uint8Array(q.buffer)) bin += String.fromCharCode(b);
  return btoa(bin);
}
