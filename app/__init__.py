"""Image-upscaling service: ESRGAN / Real-ESRGAN families (and spandrel's), ncnn files and Core ML
models, with an honest LANCZOS fallback."""
