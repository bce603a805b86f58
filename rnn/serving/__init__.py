"""Using a trained model without the frameworks: exported models on onnxruntime (runtime.py)."""
