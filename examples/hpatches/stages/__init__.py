"""The pipeline's stages, each reading the previous one's output from the run folder: data, denoise, descriptor,
evaluate."""
