"""Helper for tests/test_prior_training.py: one avatar-prior training run in its own process.

    python tests/prior_train_script.py INDEX OUT_DIR CONFIG_JSON [--kill-after STEP]

``CONFIG_JSON`` holds ``preset("cpu", ...)`` overrides. With ``--kill-after`` the
process SIGKILLs itself right after that step (a real crash: no cleanup, no
exception handler, no atexit). One torch thread, so the arithmetic matches the
test process bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("out_dir")
    parser.add_argument("config_json")
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)

    from fitting.face_models import load_face_model
    from training.prior.config import preset
    from training.prior.dataset import prior_data_from_index
    from training.prior.train import train_prior

    config = preset("cpu", **json.loads(args.config_json))
    data = prior_data_from_index(args.index)
    face_model = load_face_model("builtin", None, None)

    def on_step(step: int, metrics: dict) -> None:
        print(f"done step {step}", flush=True)
        if args.kill_after is not None and step == args.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    train_prior(config, data, face_model, args.out_dir, resume=True, log=lambda m: print(m, flush=True),
                on_step=on_step)


if __name__ == "__main__":
    main()
