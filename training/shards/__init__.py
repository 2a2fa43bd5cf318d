"""Session shards, format ``o2a.shard/1``: webdataset tars, one sample per captured image.

Why tars: training streams a dataset of ~400k images from local disk or object
storage, one sequential read per shard, split by DDP rank and DataLoader worker
(``training.loader``); an ablation selects samples by their json, nothing is
rewritten. Why this format: a sample keeps the original image bytes (hashed by
ingest) beside everything needed to train on it (camera, 3DMM fit, landmarks,
optionally a training-size image and head mask), and the same input gives the
same bytes, so a shard's sha256 identifies its content.

One concern per module, nothing re-exported here:

- ``format``: the format's names (members, tar header fields, json fields) and its one
  resize rule (``train_size``); everything else imports them.
- ``write``: a session's samples -> size-bounded tars + ``shards.json``, published atomically.
- ``read``: the one reader (open a URL, walk the tar, group members into samples),
  used by the loader and the inspector.
- ``inspect``: check a shard against the format without trusting its writer (``o2a inspect``).
"""
