"""The model stage: the model-file contract, the ONNX classifier, the AudioSet gate, custom heads."""
