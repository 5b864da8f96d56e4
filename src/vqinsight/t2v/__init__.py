"""Stage 3's text-to-video generator: T2V-Turbo (ModelScope variant) on diffusers, and its tiny demo stand-in."""
