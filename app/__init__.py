"""Image-upscaling service: RRDBNet (ESRGAN / Real-ESRGAN) and Core ML models, LANCZOS fallback."""
