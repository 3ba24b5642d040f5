"""Loaders: files on disk to plain state dicts and configured modules. Local files only, safetensors only."""
