// shoplens on iOS: detect (CoreML NMS pipeline via Vision) -> crop -> embed (CoreML) -> i8 -> POST /v1/search/batch.
//
// Drop mobile_assets/yolov8n/yolov8n_int8_nms.mlpackage and
// mobile_assets/resnet50v2-s3-256/embedder_int8.mlpackage into the Xcode project (Xcode generates
// the model classes), and add mobile_assets/yolov8n/manifest.json as a resource named
// yolov8n.manifest.json: the object-choice rule (which boxes to search, the crop margin, whether the
// whole photo is searched too) is read from its `detector.object_choice` at run time, the same keys
// every shoplens client reads, so a new detector bundle brings its own rule. Every constant is marked
// `// manifest:` (a bundle manifest field) or `// sdk:` (a default of the Python SDK), and
// tests/e2e/test_mobile_samples.py checks each one and the rules below (letterbox vs stretch, strict
// thresholds, object choice, i8 encoding, request body), so this file cannot drift from the models we
// ship or from the SDK. It is not compiled in this repository's CI (no Swift toolchain on Linux for
// UIKit/Vision): build it in Xcode.
//
// Letterbox yourself: Vision's `.scaleFit` keeps the aspect ratio but pads and resizes its own way
// (not the grey 114, centred, bilinear letterbox the detector was trained and checked with), so the
// photo is letterboxed here into a square of the input's size (480 x 480), which Vision then takes
// as is (`.scaleFill` on an image of the input's size does nothing), and the boxes are mapped back
// by undoing the letterbox.

import CoreML
import Foundation
import Vision
import UIKit

enum Shoplens {
    // Detector (Vision runs the NMS pipeline and returns VNRecognizedObjectObservation)
    static let detectorFile = "yolov8n_int8_nms.mlpackage"            // manifest: yolov8n/yolov8n_int8_nms.mlpackage file
    static let detectorInputName = "image"                            // manifest: yolov8n/yolov8n_int8_nms.mlpackage input.name
    static let detectorInputSize = 480                                // manifest: yolov8n/yolov8n_int8_nms.mlpackage input.shape[2]
    static let detectorBoxesOutput = "coordinates"                    // manifest: yolov8n/yolov8n_int8_nms.mlpackage outputs[0].name
    static let detectorScoresOutput = "confidence"                    // manifest: yolov8n/yolov8n_int8_nms.mlpackage outputs[1].name
    static let confidenceThreshold: Float = 0.01                      // manifest: yolov8n detector.conf_threshold
    static let padValue: CGFloat = 114                                // manifest: yolov8n/yolov8n_int8_nms.mlpackage input.pad_value

    // Embedder: uint8 RGB in (ImageNet normalisation is inside the graph), 256-d unit vector out
    static let embedderFile = "embedder_int8.mlpackage"               // manifest: resnet50v2-s3-256/embedder_int8.mlpackage file
    static let embedderInputName = "image"                            // manifest: resnet50v2-s3-256/embedder_int8.mlpackage input.name
    static let embedderInputSize = 224                                // manifest: resnet50v2-s3-256/embedder_int8.mlpackage input.shape[2]
    static let embeddingOutput = "embedding"                          // manifest: resnet50v2-s3-256/embedder_int8.mlpackage outputs[0].name
    static let embeddingDim = 256                                     // manifest: resnet50v2-s3-256 embedder.dim
    static let modelId = "resnet50v2-imagenet-s3-256d-ced8baa4ce1e"   // manifest: resnet50v2-s3-256 embedder.model_id
    static let topK = 5                                               // sdk: DeviceRuntime.search top_k
}

/// The detector manifest's object-choice rule (`detector.object_choice`), read at run time:
/// drop boxes of an ignored label or under `minBoxFraction` of the photo, rank by score x area, keep
/// each box unless it overlaps a kept one by more than `maxOverlap` of the smaller box, up to
/// `maxObjects`; crop each with `cropMargin` of its size per side; search the whole photo too when
/// `searchWholePhoto`, and always when no box is left.
struct ObjectChoice: Decodable {
    let minBoxFraction: CGFloat
    let maxObjects: Int
    let cropMargin: CGFloat
    let ignoreLabels: [String]
    let searchWholePhoto: Bool
    let maxOverlap: CGFloat

    enum CodingKeys: String, CodingKey {
        case minBoxFraction = "min_box_fraction", maxObjects = "max_objects", cropMargin = "crop_margin"
        case ignoreLabels = "ignore_labels", searchWholePhoto = "search_whole_photo", maxOverlap = "max_overlap"
    }

    private struct Manifest: Decodable {
        struct Detector: Decodable {
            let objectChoice: ObjectChoice
            enum CodingKeys: String, CodingKey { case objectChoice = "object_choice" }
        }
        let detector: Detector
    }

    /// `url`: the detector bundle's manifest.json, e.g.
    /// `Bundle.main.url(forResource: "yolov8n.manifest", withExtension: "json")!`.
    static func load(detectorManifest url: URL) throws -> ObjectChoice {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: url)).detector.objectChoice
    }
}

/// Letterbox: scale to fit detectorInputSize x detectorInputSize keeping the aspect ratio, centre, pad grey 114 (ultralytics' rule).
/// Returns the square image, the gain and the padding, to map boxes back to the photo.
func letterbox(_ image: CGImage) -> (CGImage, CGFloat, CGFloat, CGFloat)? {
    let s = CGFloat(Shoplens.detectorInputSize)
    let gain = min(s / CGFloat(image.width), s / CGFloat(image.height))
    let w = (CGFloat(image.width) * gain).rounded(), h = (CGFloat(image.height) * gain).rounded()
    let padX = ((s - w) / 2 - 0.1).rounded(), padY = ((s - h) / 2 - 0.1).rounded()
    guard let ctx = CGContext(data: nil, width: Int(s), height: Int(s), bitsPerComponent: 8, bytesPerRow: 0,
                              space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return nil }
    let grey = Shoplens.padValue / 255
    ctx.setFillColor(red: grey, green: grey, blue: grey, alpha: 1)
    ctx.fill(CGRect(x: 0, y: 0, width: s, height: s))
    ctx.interpolationQuality = .low  // bilinear, no antialiasing: what the detector saw (OpenCV INTER_LINEAR)
    ctx.draw(image, in: CGRect(x: padX, y: s - padY - h, width: w, height: h))  // CGContext's origin is bottom-left
    guard let out = ctx.makeImage() else { return nil }
    return (out, gain, padX, padY)
}

/// The regions to search, in photo pixels (origin top-left): the chosen boxes, largest-and-surest first
/// (score x area), then the whole photo when the rule searches it too or when no box is left.
func detectProducts(in image: CGImage, detector: MLModel, choice: ObjectChoice) throws -> [CGRect] {
    let whole = CGRect(x: 0, y: 0, width: CGFloat(image.width), height: CGFloat(image.height))
    guard let boxed = letterbox(image) else { return [whole] }
    let (input, gain, padX, padY) = boxed
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: detector))
    request.imageCropAndScaleOption = .scaleFill  // the input is already the model's size: taken as is
    try VNImageRequestHandler(cgImage: input, orientation: .up).perform([request])
    let s = CGFloat(Shoplens.detectorInputSize)
    let photoArea = whole.width * whole.height
    let found: [(CGRect, Float)] = (request.results as? [VNRecognizedObjectObservation] ?? [])
        .filter { $0.confidence > VNConfidence(Shoplens.confidenceThreshold) }  // strictly above, as the SDK
        .filter { !choice.ignoreLabels.contains($0.labels.first?.identifier ?? "") }  // e.g. the shopper's hand is never the product
        .map { obs in
            // Vision's box: normalised to the square input, origin bottom-left -> undo the letterbox
            let b = obs.boundingBox
            let x1 = (b.minX * s - padX) / gain, x2 = (b.maxX * s - padX) / gain
            let y1 = ((1 - b.maxY) * s - padY) / gain, y2 = ((1 - b.minY) * s - padY) / gain
            return (CGRect(x: x1, y: y1, width: x2 - x1, height: y2 - y1).intersection(whole), obs.confidence)
        }
        .filter { $0.0.width * $0.0.height >= choice.minBoxFraction * photoArea }
        .sorted { $0.1 * Float($0.0.width * $0.0.height) > $1.1 * Float($1.0.width * $1.0.height) }
    var boxes: [CGRect] = []
    for (box, _) in found where boxes.count < choice.maxObjects {
        if boxes.allSatisfy({ overlap($0, box) <= choice.maxOverlap }) { boxes.append(box) }  // a part or a second label of a kept box is skipped
    }
    return boxes.isEmpty || choice.searchWholePhoto ? boxes + [whole] : boxes  // the whole photo last (no margin: it is clipped away)
}

/// The overlap of two boxes as a share of the smaller one's area (0 for a box of no area).
func overlap(_ a: CGRect, _ b: CGRect) -> CGFloat {
    let i = a.intersection(b)
    let smaller = min(a.width * a.height, b.width * b.height)
    return i.isNull || smaller <= 0 ? 0 : i.width * i.height / smaller
}

/// Crop a box (photo pixels, origin top-left) with the rule's margin on each side: floor / ceil, clipped to the photo.
func crop(_ image: CGImage, to box: CGRect, choice: ObjectChoice) -> CGImage? {
    let mx = box.width * choice.cropMargin, my = box.height * choice.cropMargin
    let left = max(0, (box.minX - mx).rounded(.down)), top = max(0, (box.minY - my).rounded(.down))
    let right = min(CGFloat(image.width), (box.maxX + mx).rounded(.up)), bottom = min(CGFloat(image.height), (box.maxY + my).rounded(.up))
    return image.cropping(to: CGRect(x: left, y: top, width: right - left, height: bottom - top))
}

/// Stretch a crop to 224 x 224 with an antialiased filter (the SDK shrinks with Pillow's antialiased
/// bilinear; Vision's own resize, like MediaPipe's plain bilinear, gives cos ~0.998 on average instead of 1.0).
func stretch(_ crop: CGImage) -> CGImage? {
    let s = Shoplens.embedderInputSize
    guard let ctx = CGContext(data: nil, width: s, height: s, bitsPerComponent: 8, bytesPerRow: 0,
                              space: CGColorSpaceCreateDeviceRGB(), bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return nil }
    ctx.interpolationQuality = .high
    ctx.draw(crop, in: CGRect(x: 0, y: 0, width: s, height: s))
    return ctx.makeImage()
}

/// The crop's 256-d embedding: stretched to 224 x 224 (the manifest's resize rule), uint8 RGB in.
func embed(_ crop: CGImage, embedder: MLModel) throws -> [Float] {
    guard let input = stretch(crop) else { throw NSError(domain: "shoplens", code: 2) }
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: embedder))
    request.imageCropAndScaleOption = .scaleFill  // stretch (a no-op here: the input is already 224 x 224)
    try VNImageRequestHandler(cgImage: input, orientation: .up).perform([request])
    guard let out = (request.results as? [VNCoreMLFeatureValueObservation])?
        .first(where: { $0.featureName == Shoplens.embeddingOutput })?.featureValue.multiArrayValue,
          out.count == Shoplens.embeddingDim else { throw NSError(domain: "shoplens", code: 1) }
    return (0..<out.count).map { out[$0].floatValue }
}

/// The contract's i8 wire encoding: L2-normalise, scale the largest |component| to 127, round half to even.
func encodeI8(_ v: [Float]) -> String {
    let norm = sqrt(v.reduce(0) { $0 + $1 * $1 })
    let unit = v.map { $0 / norm }
    let peak = unit.map { abs($0) }.max() ?? 1
    let q = unit.map { Int8(max(-127, min(127, ($0 * 127 / peak).rounded(.toNearestOrEven)))) }
    return Data(q.map { UInt8(bitPattern: $0) }).base64EncodedString()
}

/// The photo's answer: every object's results merged per product, best score wins (the SDK's fuse_hits);
/// `results`: the `hits` of each entry of the batch response's `results`, as (product_id, score).
func bestMatches(_ results: [[(productId: String, score: Double)]]) -> [(productId: String, score: Double)] {
    var best: [String: Double] = [:]
    for hits in results { for hit in hits where hit.score > (best[hit.productId] ?? -Double.infinity) { best[hit.productId] = hit.score } }
    return best.map { (productId: $0.key, score: $0.value) }.sorted { $0.score > $1.score }
}

/// One request for every object in the photo; only vectors leave the phone.
func searchRequest(server: URL, deviceKey: String, vectors: [String], topK: Int = Shoplens.topK) throws -> URLRequest {
    var req = URLRequest(url: server.appendingPathComponent("v1/search/batch"))
    req.httpMethod = "POST"
    req.setValue("application/json", forHTTPHeaderField: "Content-Type")
    req.setValue("Bearer \(deviceKey)", forHTTPHeaderField: "Authorization")
    let body: [String: Any] = ["model_id": Shoplens.modelId, "encoding": "i8", "vectors": vectors, "top_k": topK]
    req.httpBody = try JSONSerialization.data(withJSONObject: body)
    return req
}
