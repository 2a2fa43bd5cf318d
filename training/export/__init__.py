"""Hand out exactly the part of the dataset someone asked for, in the format their tool reads.

``run.export_dataset`` is the entry point (``o2a export``, the ``dataset_export`` asset);
``cells`` reads the selected samples out of the shards, ``formats`` writes each frame
in nerfstudio, COLMAP or the project's own convention.
"""
