"""Helper for tests/test_prior_training.py: an avatar-prior training under ``torchrun`` (DDP, gloo on CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/prior_ddp_script.py \
        INDEX OUT_DIR JSON_DIR CONFIG_JSON

Each rank writes ``JSON_DIR/rank<r>.json``: the keys and subjects of every frame it
trained on (recorded by wrapping ``FrameStream.next_batch``, in this process only),
its final stream position and a sha256 of its model's final state_dict (the model is
captured by wrapping ``train.build_prior``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def state_digest(state: dict) -> str:
    """sha256 over the names and raw bytes of a state_dict's tensors (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("out_dir")
    parser.add_argument("json_dir")
    parser.add_argument("config_json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)

    from fitting.face_models import load_face_model
    from training.prior import dataset as dataset_mod
    from training.prior import train as train_mod
    from training.prior.config import preset

    seen: list[dict] = []
    streams: list = []
    models: list = []
    original_next_batch = dataset_mod.FrameStream.next_batch
    original_build_prior = train_mod.build_prior

    def recording_next_batch(self):
        batch = original_next_batch(self)
        if not streams or streams[-1] is not self:
            streams.append(self)
        seen.append({"keys": list(batch["key"]), "subjects": list(batch["subject_id"])})
        return batch

    def capturing_build_prior(*a, **kw):
        model = original_build_prior(*a, **kw)
        models.append(model)
        return model

    dataset_mod.FrameStream.next_batch = recording_next_batch
    train_mod.build_prior = capturing_build_prior

    config = preset("cpu", **json.loads(args.config_json))
    data = dataset_mod.prior_data_from_index(args.index)
    face_model = load_face_model("builtin", None, None)
    rank = int(os.environ["RANK"])
    result = train_mod.train_prior(config, data, face_model, args.out_dir,
                                   log=(lambda m: print(m, flush=True)) if rank == 0 else None)
    assert len(models) == 1 and len(streams) == 1
    report = {
        "rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "result_world_size": result.world_size,
        "steps": result.steps, "batches": seen, "position": list(streams[0].position),
        "state_sha256": state_digest(models[0].state_dict()), "history": result.history,
    }
    out = Path(args.json_dir) / f"rank{rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
