"""Convert the published TAEF2 weights into a GLVC tokenizer folder (safetensors + config).

    python scripts/convert_taef2.py --encoder taef2_encoder.pth --decoder taef2_decoder.pth --out DIR \
        [--stats data/train_set]

The two files are the float16 state dicts of github.com/madebyollin/taesd (MIT licence, Ollin Boer
Bohan): ``taef2_encoder.pth`` and ``taef2_decoder.pth``. Their keys index ``nn.Sequential`` layers
(``11.conv.2.weight``, ``3.pool.1.bias``); :class:`glvc.tokenizer_taef.TinyAutoencoder` has the same
layer order under ``encoder.``/``decoder.``, with the blocks' ``conv`` named ``convs`` and ``pool``
named ``norm_branch``. Every tensor is checked against the built model's shape; the weights are
stored in float16, as published (loaded as float32).

With ``--stats`` the per-channel latent mean and standard deviation are measured on frames of the
training set (:class:`glvc.data.dataset.TrainSet`) and written into the config, so that the codec
sees normalised latents; without it they are 0 and 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from glvc.tokenizer_taef import TinyAutoencoder  # noqa: E402

RENAMES = ((".conv.", ".convs."), (".pool.", ".norm_branch."))


def converted_state(encoder: dict, decoder: dict) -> dict[str, torch.Tensor]:
    """The two published state dicts as one state dict of :class:`TinyAutoencoder`, float32."""
    out = {}
    for side, state in (("encoder", encoder), ("decoder", decoder)):
        for key, tensor in state.items():
            name = f"{side}.{key}"
            for old, new in RENAMES:
                name = name.replace(old, new)
            out[name] = tensor.float()
    return out


@torch.no_grad()
def latent_statistics(model: TinyAutoencoder, root: str, clips: int, frames: int, size: int, seed: int = 0):
    """Per-channel mean and std of the raw latents over ``clips`` x ``frames`` training crops of ``size`` px."""
    from glvc.data.dataset import TrainSet

    data = TrainSet(root, seed=seed)
    values = []
    for _ in range(clips):
        x = data.sample(1, frames, size)  # (1, 3, T, size, size) in [-1, 1]
        x = x[0].transpose(0, 1).add(1).mul(0.5)  # (T, 3, size, size) in [0, 1]
        values.append(model.encoder(x).transpose(0, 1).flatten(1))
    z = torch.cat(values, dim=1)
    return [round(v, 5) for v in z.mean(1).tolist()], [round(v, 5) for v in z.std(1).clamp_min(1e-3).tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--decoder", required=True)
    parser.add_argument("--out", required=True, help="tokenizer folder to write (config.json + safetensors)")
    parser.add_argument("--stats", help="training set folder to measure the latent statistics on")
    parser.add_argument("--stats-clips", type=int, default=48)
    parser.add_argument("--stats-frames", type=int, default=5)
    parser.add_argument("--stats-size", type=int, default=256)
    args = parser.parse_args()

    encoder = torch.load(args.encoder, map_location="cpu", weights_only=True)
    decoder = torch.load(args.decoder, map_location="cpu", weights_only=True)
    model = TinyAutoencoder()
    state = converted_state(encoder, decoder)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SystemExit(f"weights do not match the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise SystemExit(f"{key}: file has {tuple(tensor.shape)}, the architecture {tuple(expected[key].shape)}")
    model.load_state_dict(state)
    model.eval()
    if args.stats:
        mean, std = latent_statistics(model, args.stats, args.stats_clips, args.stats_frames, args.stats_size)
        model.register_to_config(latents_mean=mean, latents_std=std)
        print(f"latent statistics over {args.stats_clips} x {args.stats_frames} crops of {args.stats_size} px: "
              f"mean {min(mean):.3f} .. {max(mean):.3f}, std {min(std):.3f} .. {max(std):.3f}")
    model.half().save_pretrained(args.out)
    print(f"wrote {args.out}: {sum(t.numel() for t in state.values()):,} parameters")


if __name__ == "__main__":
    main()
