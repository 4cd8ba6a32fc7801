"""Model backends. torch and coremltools are imported only inside pytorch.py / coreml.py functions."""
