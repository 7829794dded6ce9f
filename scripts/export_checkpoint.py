"""Export the latent codec of a training run's latest checkpoint, to evaluate a run that is still going.

    python scripts/export_checkpoint.py runs/codec_gaussian_hyper --out runs/codec_gaussian_hyper/step_now

The folder it writes loads with ``LatentCodec.from_pretrained`` and goes to
``scripts/codec_sweep.py --codec``. The run's ``config.json`` says how the codec was built.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc.train import export_codec_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a training run's output_dir (holds config.json and codec.pt)")
    parser.add_argument("--out", required=True, help="folder to write config.json and model.safetensors into")
    args = parser.parse_args()
    export_codec_checkpoint(args.run_dir, args.out)


if __name__ == "__main__":
    main()
