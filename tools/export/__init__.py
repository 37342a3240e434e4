"""Export a trained run to the artifact that ships: ONNX, manifest, validation set."""
