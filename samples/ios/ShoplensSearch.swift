// shoplens on iOS: detect (CoreML NMS pipeline via Vision) -> crop -> embed (CoreML) -> i8 -> POST /v1/search/batch.
//
// Drop mobile_assets/yolov8n/yolov8n_int8_nms.mlpackage and
// mobile_assets/resnet50v2-s3-256/embedder_int8.mlpackage into the Xcode project (Xcode generates
// the model classes). Every constant marked `// manifest:` is checked against the bundle manifests
// by tests/e2e/test_mobile_samples.py, so this file cannot drift from the models we ship.

import CoreML
import Foundation
import Vision
import UIKit

enum Shoplens {
    // Detector (Vision runs the NMS pipeline and returns VNRecognizedObjectObservation)
    static let detectorFile = "yolov8n_int8_nms.mlpackage"            // manifest: yolov8n/yolov8n_int8_nms.mlpackage file
    static let detectorInputName = "image"                            // manifest: yolov8n/yolov8n_int8_nms.mlpackage input.name
    static let detectorInputSize = 640                                // manifest: yolov8n/yolov8n_int8_nms.mlpackage input.shape[2]
    static let detectorBoxesOutput = "coordinates"                    // manifest: yolov8n/yolov8n_int8_nms.mlpackage outputs[0].name
    static let detectorScoresOutput = "confidence"                    // manifest: yolov8n/yolov8n_int8_nms.mlpackage outputs[1].name
    static let confidenceThreshold: Float = 0.25                      // manifest: yolov8n detector.conf_threshold
    static let minBoxFraction: CGFloat = 0.3                          // the product must fill 30% of the photo, else embed it whole
    static let ignoredLabel = "person"                                // manifest: yolov8n detector.class_names[0]

    // Embedder: uint8 RGB in (ImageNet normalisation is inside the graph), 256-d unit vector out
    static let embedderFile = "embedder_int8.mlpackage"               // manifest: resnet50v2-s3-256/embedder_int8.mlpackage file
    static let embedderInputName = "image"                            // manifest: resnet50v2-s3-256/embedder_int8.mlpackage input.name
    static let embedderInputSize = 224                                // manifest: resnet50v2-s3-256/embedder_int8.mlpackage input.shape[2]
    static let embeddingOutput = "embedding"                          // manifest: resnet50v2-s3-256/embedder_int8.mlpackage outputs[0].name
    static let embeddingDim = 256                                     // manifest: resnet50v2-s3-256 embedder.dim
    static let modelId = "resnet50v2-imagenet-s3-256d-ced8baa4ce1e"   // manifest: resnet50v2-s3-256 embedder.model_id
    static let cropMargin: CGFloat = 0.10
}

/// Boxes of the products in the photo, largest-and-surest first (score x area), in Vision's normalised coordinates.
func detectProducts(in image: CGImage, detector: MLModel, maxObjects: Int = 3) throws -> [CGRect] {
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: detector))
    request.imageCropAndScaleOption = .scaleFit  // letterbox, as the model was trained
    try VNImageRequestHandler(cgImage: image, orientation: .up).perform([request])
    let found = (request.results as? [VNRecognizedObjectObservation] ?? [])
        .filter { $0.confidence >= VNConfidence(Shoplens.confidenceThreshold) }
        .filter { $0.labels.first?.identifier != Shoplens.ignoredLabel }  // the shopper's hand is never the product
        .filter { $0.boundingBox.width * $0.boundingBox.height >= Shoplens.minBoxFraction }
        .sorted { $0.confidence * Float($0.boundingBox.width * $0.boundingBox.height) > $1.confidence * Float($1.boundingBox.width * $1.boundingBox.height) }
    let boxes = found.prefix(maxObjects).map { $0.boundingBox }
    return boxes.isEmpty ? [CGRect(x: 0, y: 0, width: 1, height: 1)] : Array(boxes)  // no product found: the whole photo
}

/// Crop a Vision box (normalised, origin bottom-left) with a margin, in pixel coordinates.
func crop(_ image: CGImage, to box: CGRect) -> CGImage? {
    let w = CGFloat(image.width), h = CGFloat(image.height)
    var r = CGRect(x: box.minX * w, y: (1 - box.maxY) * h, width: box.width * w, height: box.height * h)
    r = r.insetBy(dx: -r.width * Shoplens.cropMargin, dy: -r.height * Shoplens.cropMargin)
    return image.cropping(to: r.intersection(CGRect(x: 0, y: 0, width: w, height: h)))
}

/// The crop's 256-d embedding. Vision stretches the crop to 224x224 (the manifest's resize rule).
func embed(_ crop: CGImage, embedder: MLModel) throws -> [Float] {
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: embedder))
    request.imageCropAndScaleOption = .scaleFill  // stretch
    try VNImageRequestHandler(cgImage: crop, orientation: .up).perform([request])
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

/// One request for every object in the photo; only vectors leave the phone.
func searchRequest(server: URL, deviceKey: String, vectors: [String], topK: Int = 5) throws -> URLRequest {
    var req = URLRequest(url: server.appendingPathComponent("v1/search/batch"))
    req.httpMethod = "POST"
    req.setValue("application/json", forHTTPHeaderField: "Content-Type")
    req.setValue("Bearer \(deviceKey)", forHTTPHeaderField: "Authorization")
    let body: [String: Any] = ["model_id": Shoplens.modelId, "encoding": "i8", "vectors": vectors, "top_k": topK]
    req.httpBody = try JSONSerialization.data(withJSONObject: body)
    return req
}
