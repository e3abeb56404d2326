"""Gaussian-splatting core shared by the 3DGS and 2DGS methods.

:mod:`.rasterize` is the entry point: ``rasterize_3dgs`` / ``rasterize_2dgs`` dispatch to gsplat's CUDA
kernels for GPU tensors and to the CPU tile rasterizer (:mod:`.rasterize_cpu`, :mod:`.rasterize_cpu_2dgs`,
on the numba kernels of :mod:`.cpu_kernels`) otherwise.
"""
