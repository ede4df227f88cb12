"""shoplens.converters: YOLO detector and ResNet embedder -> CoreML / TFLite bundles.

Needs the ``convert`` extra (torch, ultralytics, coremltools, litert-torch).
"""
