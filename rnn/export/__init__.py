"""Trained runs exported as ONNX (rnn/export/bundle.py), for serving without the frameworks."""
