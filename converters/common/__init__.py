"""What the detector and embedder converters share: errors, the precision plan, the result, fp16 casting, the MIL evaluator."""
