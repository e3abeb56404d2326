"""Real-data builders: COLMAP and nerfstudio captures, and the DL3DV, Tanks and Temples and Mip-NeRF 360
layouts, into shards (``gfbench.shards``).

- ``colmap.build_colmap(path, images=..., dataset=..., scene_id=..., out=...)``
- ``nerfstudio.build_nerfstudio(path, images=..., dataset=..., scene_id=..., out=...)``
- ``known.build_known(dataset_id, source, scenes=..., out=...)`` and ``known.download_dl3dv(...)``
- ``common.BuildError``: every refusal, naming the file and the problem; nothing is written on error.
- ``undistort``: lenses with radial-tangential distortion and their undistortion to a pinhole camera.
"""
