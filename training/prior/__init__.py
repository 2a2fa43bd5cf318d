"""The avatar prior: a radiance field anchored to the fitted 3DMM mesh, trained by auto-decoding.

Stages, one module each (nerfstudio-style: the tree is the architecture)::

    config     PriorConfig and presets (cpu: 64 px demo/tests, gpu: full size)
    frames     loader samples -> head crops with per-pixel camera rays (+ posed mesh)
    rays       ray/sphere bounds, stratified and importance sampling, volume rendering
    anchors    k-nearest posed vertices of sample points (shared by both backbones)
    anchored   the mesh-anchored field (identity + expression features on vertices)
    triplane   the tri-plane field behind the same interface
    model      AvatarPrior: latent table + field + background, renders rays and images
    checkpoint atomic save / weights_only load
    train      the auto-decoding loop (single process or DDP under torchrun), resumable
    report     loss and PSNR curves as a PNG
"""
