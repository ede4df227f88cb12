"""The product embedder: trunks, head fitting, fine-tuning, and conversion to TFLite / CoreML with a parity gate.

Entry points: ``embedder.train.train`` (fine-tuning) and ``embedder.convert.convert_embedder`` (the bundle).
"""
