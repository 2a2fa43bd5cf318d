"""Few-shot adaptation of the avatar prior to a new subject, and its evaluation.

One module per concern::

    config     FewShotConfig and presets (cpu: demo/tests, gpu: full size)
    selection  the documented, seeded choice of the K inputs and of the scored frames
    adapt      stage 1 (identity code), stage 2 (code + weights + 3DMM + cameras), the no-prior baseline
    metrics    PSNR, SSIM (whole crop and head mask), LPIPS only from local weights
    evaluate   the protocol per held-out subject: every K, method and camera condition
    report     summary table, PSNR-vs-K plot, self-contained HTML, Parquet
"""
