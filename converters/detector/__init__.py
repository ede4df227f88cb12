"""The YOLO detector converter: ultralytics checkpoint -> TFLite / CoreML bundle with a parity gate.

Entry point: ``shoplens.converters.detector.convert.convert_detector``.
"""
