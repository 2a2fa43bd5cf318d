"""The prior's identity latent space: interpolation, sampling and the metrics that say how good it is.

``scene`` (a captured frame's camera and 3DMM fit, rendered with any code), ``codes``
(training and adapted codes by id), ``interpolate``, ``sample`` (a Gaussian over the
training codes), ``metrics`` (smoothness, coverage, landmark agreement; numpy only),
``plausibility`` (mediapipe on the renders), ``report`` (HTML, Parquet, images) and
``stage`` (everything for one prior, into a storage folder: the ``latent_space_report``
and ``ablation_latent`` stage).
"""
