"""Images in and out: `decode` (probe the header once, then the pixels), `pixels` (resize, quantise, the
Picture every path produces), `encode` (PNG / JPEG / WebP with metadata), `png16` (16-bit PNGs)."""
