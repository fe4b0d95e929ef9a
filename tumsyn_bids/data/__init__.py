"""Package data: the CLIP BPE vocabulary (see LICENSE-CLIP-VOCAB) and default tables."""
