"""Synthetic flat-shape data, its small VAE and the pixel measurer: how the embedded default model is made and scored."""
