"""GenFusion (Wu et al. 2025): the pieces of cyclic fusion of 2DGS with an RGB-D video diffusion prior."""
