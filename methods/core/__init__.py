"""Gaussian-splatting core shared by the Gaussian methods (3DGS, 2DGS and those built on them).

:mod:`.training` is the open training loop (``GaussianMethod``, ``Trainer``, ``ViewSource``, ``TrainView``);
:mod:`.strategies` the densification strategies chosen by the ``strategy`` setting; :mod:`.densify` grows
Gaussians with their optimizer state; :mod:`.gaussians` the parameters and optimizers; :mod:`.losses` the
losses. :mod:`.rasterize` is the rasterizer entry point: ``rasterize_3dgs`` / ``rasterize_2dgs`` dispatch to
gsplat's CUDA kernels for GPU tensors and to the CPU tile rasterizer (:mod:`.rasterize_cpu`,
:mod:`.rasterize_cpu_2dgs`, on the numba kernels of :mod:`.cpu_kernels`) otherwise.
"""
