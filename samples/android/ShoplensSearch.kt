// shoplens on Android: detect (LiteRT YOLO) -> crop -> embed (LiteRT) -> i8 -> POST /v1/search/batch.
//
// Put mobile_assets/yolov8n/yolov8n_int8.tflite, mobile_assets/resnet50v2-s3-256/embedder_w8.tflite
// and mobile_assets/yolov8n/manifest.json (as yolov8n.manifest.json) in src/main/assets: the
// object-choice rule (which boxes to search, the crop margin, whether the whole photo is searched
// too) is read from the manifest's `detector.object_choice` at run time, the same keys every shoplens
// client reads, so a new detector bundle brings its own rule. Every constant is marked
// `// manifest:` (a bundle manifest field) or `// sdk:` (a default of the Python SDK);
// tests/e2e/test_mobile_samples.py checks each one and the rules below (letterbox vs stretch, strict
// thresholds, object choice, crop rounding, i8 encoding, request body). It is not compiled in this
// repository's CI (it needs the Android SDK): build it in Android Studio.
// The MediaPipe Tasks path (ImageEmbedder on the same embedder_w8.tflite) is in mobile_assets/README.md.

package dev.shoplens.sample

import android.graphics.Bitmap
import android.graphics.Color
import android.util.Base64
import org.json.JSONArray
import org.json.JSONObject
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder
import kotlin.math.abs
import kotlin.math.ceil
import kotlin.math.floor
import kotlin.math.max
import kotlin.math.min
import kotlin.math.roundToInt
import kotlin.math.sqrt

object Shoplens {
    const val DETECTOR_FILE = "yolov8n_int8.tflite"                       // manifest: yolov8n/yolov8n_int8.tflite file
    const val DETECTOR_INPUT = "serving_default_args_0"                   // manifest: yolov8n/yolov8n_int8.tflite input.name
    const val DETECTOR_SIZE = 480                                         // manifest: yolov8n/yolov8n_int8.tflite input.shape[2]
    const val DETECTOR_PAD = 114                                          // manifest: yolov8n/yolov8n_int8.tflite input.pad_value
    const val DETECTOR_ROWS = 84                                          // manifest: yolov8n/yolov8n_int8.tflite outputs[0].shape[1]
    const val DETECTOR_CANDIDATES = 4725                                  // manifest: yolov8n/yolov8n_int8.tflite outputs[0].shape[2]
    const val CONF_THRESHOLD = 0.01f                                      // manifest: yolov8n detector.conf_threshold
    const val IOU_THRESHOLD = 0.45f                                       // manifest: yolov8n detector.iou_threshold

    const val EMBEDDER_FILE = "embedder_w8.tflite"                        // manifest: resnet50v2-s3-256/embedder_w8.tflite file
    const val EMBEDDER_INPUT = "serving_default_args_0"                   // manifest: resnet50v2-s3-256/embedder_w8.tflite input.name
    const val EMBEDDER_SIZE = 224                                         // manifest: resnet50v2-s3-256/embedder_w8.tflite input.shape[1]
    const val EMBEDDING_DIM = 256                                         // manifest: resnet50v2-s3-256 embedder.dim
    const val MODEL_ID = "resnet50v2-imagenet-s3-256d-ced8baa4ce1e"       // manifest: resnet50v2-s3-256 embedder.model_id
    const val TOP_K = 5                                                   // sdk: DeviceRuntime.search top_k
}

/** The detector manifest's object-choice rule (`detector.object_choice`), read at run time: drop boxes
 *  of an ignored class or under minBoxFraction of the photo, rank by score x area, keep each box unless
 *  it overlaps a kept one by more than maxOverlap of the smaller box, up to maxObjects; crop each with
 *  cropMargin of its size per side; search the whole photo too when searchWholePhoto, and always when
 *  no box is left. */
data class ObjectChoice(val minBoxFraction: Float, val maxObjects: Int, val cropMargin: Float, val ignoredClasses: Set<Int>, val searchWholePhoto: Boolean,
                        val maxOverlap: Float) {
    companion object {
        /** `manifestJson`: the detector bundle's manifest.json, e.g. assets.open("yolov8n.manifest.json").reader().readText(). */
        fun fromManifest(manifestJson: String): ObjectChoice {
            val detector = JSONObject(manifestJson).getJSONObject("detector")
            val c = detector.getJSONObject("object_choice")
            val names = detector.getJSONArray("class_names")
            val ignored = c.getJSONArray("ignore_labels").let { a -> (0 until a.length()).map { a.getString(it) }.toSet() }
            return ObjectChoice(c.getDouble("min_box_fraction").toFloat(), c.getInt("max_objects"), c.getDouble("crop_margin").toFloat(),
                (0 until names.length()).filter { names.getString(it) in ignored }.toSet(), c.getBoolean("search_whole_photo"),
                c.getDouble("max_overlap").toFloat())
        }
    }
}

data class Box(val x1: Float, val y1: Float, val x2: Float, val y2: Float, val score: Float, val cls: Int) {
    val area get() = max(0f, x2 - x1) * max(0f, y2 - y1)
}

/** Letterbox to DETECTOR_SIZE x DETECTOR_SIZE (grey 114, centred), float32 NCHW scaled 1/255: the manifest's input rule. */
fun detectorInput(photo: Bitmap): Pair<ByteBuffer, FloatArray> {
    val s = Shoplens.DETECTOR_SIZE
    val gain = min(s.toFloat() / photo.width, s.toFloat() / photo.height)
    val w = (photo.width * gain).roundToInt(); val h = (photo.height * gain).roundToInt()
    val padX = ((s - w) / 2.0 - 0.1).roundToInt(); val padY = ((s - h) / 2.0 - 0.1).roundToInt()  // ultralytics: the odd pixel goes right / bottom
    val scaled = Bitmap.createScaledBitmap(photo, w, h, true)
    val buf = ByteBuffer.allocateDirect(4 * 3 * s * s).order(ByteOrder.nativeOrder())
    val pixels = IntArray(w * h).also { scaled.getPixels(it, 0, w, 0, 0, w, h) }
    for (c in 0 until 3) for (y in 0 until s) for (x in 0 until s) {
        val inside = x in padX until padX + w && y in padY until padY + h
        val p = if (inside) pixels[(y - padY) * w + (x - padX)] else Color.rgb(Shoplens.DETECTOR_PAD, Shoplens.DETECTOR_PAD, Shoplens.DETECTOR_PAD)
        val v = when (c) { 0 -> Color.red(p); 1 -> Color.green(p); else -> Color.blue(p) }
        buf.putFloat(v / 255f)
    }
    return buf.rewind() as ByteBuffer to floatArrayOf(gain, padX.toFloat(), padY.toFloat())
}

/** Decode [1, 84, DETECTOR_CANDIDATES] (cx, cy, w, h normalised 0-1, then 80 class scores), NMS, back to photo pixels;
 *  then the regions to search: the chosen boxes, then the whole photo (class -1) when the rule searches it too or no box is left. */
fun detect(detector: Interpreter, photo: Bitmap, choice: ObjectChoice): List<Box> {
    val (input, geo) = detectorInput(photo)
    val out = Array(1) { Array(Shoplens.DETECTOR_ROWS) { FloatArray(Shoplens.DETECTOR_CANDIDATES) } }
    detector.run(input, out)
    val s = Shoplens.DETECTOR_SIZE.toFloat(); val (gain, padX, padY) = Triple(geo[0], geo[1], geo[2])
    val cands = (0 until Shoplens.DETECTOR_CANDIDATES).mapNotNull { i ->
        var best = 0; var score = 0f
        for (c in 4 until Shoplens.DETECTOR_ROWS) if (out[0][c][i] > score) { score = out[0][c][i]; best = c - 4 }
        if (score <= Shoplens.CONF_THRESHOLD) return@mapNotNull null
        val cx = out[0][0][i] * s; val cy = out[0][1][i] * s; val bw = out[0][2][i] * s; val bh = out[0][3][i] * s
        Box(((cx - bw / 2 - padX) / gain).coerceIn(0f, photo.width.toFloat()), ((cy - bh / 2 - padY) / gain).coerceIn(0f, photo.height.toFloat()),
            ((cx + bw / 2 - padX) / gain).coerceIn(0f, photo.width.toFloat()), ((cy + bh / 2 - padY) / gain).coerceIn(0f, photo.height.toFloat()), score, best)
    }.sortedByDescending { it.score }
    val kept = mutableListOf<Box>()
    for (b in cands) if (kept.none { it.cls == b.cls && iou(it, b) > Shoplens.IOU_THRESHOLD }) kept += b
    val photoArea = photo.width.toFloat() * photo.height
    val boxes = mutableListOf<Box>()
    for (b in kept.filter { it.cls !in choice.ignoredClasses && it.area >= choice.minBoxFraction * photoArea }.sortedByDescending { it.score * it.area }) {
        if (boxes.size == choice.maxObjects) break
        if (boxes.all { overlap(it, b) <= choice.maxOverlap }) boxes += b  // a part or a second label of a kept box is skipped
    }
    val whole = Box(0f, 0f, photo.width.toFloat(), photo.height.toFloat(), 0f, -1)  // the whole photo (no margin: it is clipped away)
    return if (boxes.isEmpty() || choice.searchWholePhoto) boxes + whole else boxes
}

/** The overlap of two boxes as a share of the smaller one's area (0 for a box of no area). */
fun overlap(a: Box, b: Box): Float {
    val iw = max(0f, min(a.x2, b.x2) - max(a.x1, b.x1)); val ih = max(0f, min(a.y2, b.y2) - max(a.y1, b.y1))
    val smaller = min(a.area, b.area)
    return if (smaller > 0f) iw * ih / smaller else 0f
}

fun iou(a: Box, b: Box): Float {
    val iw = max(0f, min(a.x2, b.x2) - max(a.x1, b.x1)); val ih = max(0f, min(a.y2, b.y2) - max(a.y1, b.y1))
    return iw * ih / (a.area + b.area - iw * ih + 1e-9f)
}

/** Crop with margin (floor / ceil, clipped), stretch to 224x224, uint8 RGB NHWC (normalisation is inside the model).
 *  createScaledBitmap's bilinear does not antialias when shrinking; the SDK does (Pillow), which is worth
 *  cos ~0.003 on large crops: shrink in halves first (or use an area filter) to match it more closely. */
fun embed(embedder: Interpreter, photo: Bitmap, box: Box, choice: ObjectChoice): FloatArray {
    val mx = (box.x2 - box.x1) * choice.cropMargin; val my = (box.y2 - box.y1) * choice.cropMargin
    val l = max(0, floor(box.x1 - mx).toInt()); val t = max(0, floor(box.y1 - my).toInt())
    val r = min(photo.width, ceil(box.x2 + mx).toInt()); val b = min(photo.height, ceil(box.y2 + my).toInt())
    val crop = Bitmap.createScaledBitmap(Bitmap.createBitmap(photo, l, t, r - l, b - t), Shoplens.EMBEDDER_SIZE, Shoplens.EMBEDDER_SIZE, true)
    val n = Shoplens.EMBEDDER_SIZE * Shoplens.EMBEDDER_SIZE
    val input = ByteBuffer.allocateDirect(3 * n).order(ByteOrder.nativeOrder())
    val px = IntArray(n).also { crop.getPixels(it, 0, Shoplens.EMBEDDER_SIZE, 0, 0, Shoplens.EMBEDDER_SIZE, Shoplens.EMBEDDER_SIZE) }
    for (p in px) { input.put(Color.red(p).toByte()); input.put(Color.green(p).toByte()); input.put(Color.blue(p).toByte()) }
    val out = Array(1) { FloatArray(Shoplens.EMBEDDING_DIM) }
    embedder.run(input.rewind(), out)
    return out[0]
}

/** The contract's i8 wire encoding: L2-normalise, largest |component| -> 127, round half to even. */
fun encodeI8(v: FloatArray): String {
    val norm = sqrt(v.fold(0.0) { acc, x -> acc + x * x }).toFloat()
    val unit = v.map { it / norm }
    val peak = unit.maxOf { abs(it) }
    val bytes = ByteArray(unit.size) { i -> Math.rint((unit[i] * 127 / peak).toDouble()).coerceIn(-127.0, 127.0).toInt().toByte() }
    return Base64.encodeToString(bytes, Base64.NO_WRAP)
}

/** The photo's answer: every object's results merged per product, best score wins (the SDK's fuse_hits).
 *  `response`: the batch response's JSON; each entry of its `results` holds one object's `hits`. */
fun bestMatches(response: String): List<Pair<String, Double>> {
    val best = mutableMapOf<String, Double>()
    val results = JSONObject(response).getJSONArray("results")
    for (i in 0 until results.length()) {
        val hits = results.getJSONObject(i).getJSONArray("hits")
        for (j in 0 until hits.length()) {
            val hit = hits.getJSONObject(j); val id = hit.getString("product_id"); val score = hit.getDouble("score")
            if (score > (best[id] ?: Double.NEGATIVE_INFINITY)) best[id] = score
        }
    }
    return best.toList().sortedByDescending { it.second }
}

/** The body of POST /v1/search/batch: one request for every object in the photo, vectors only. */
fun searchBody(vectors: List<String>, topK: Int = Shoplens.TOP_K): String = JSONObject()
    .put("model_id", Shoplens.MODEL_ID).put("encoding", "i8").put("vectors", JSONArray(vectors)).put("top_k", topK).toString()
