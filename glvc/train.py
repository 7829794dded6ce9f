"""Training: stage 1 the tokenizer, stage 2 the latent codec. ``python -m glvc train --config CONFIG``.

Runs unchanged as one CPU process or under ``torchrun --nproc_per_node N`` (DDP; NCCL on GPUs,
Gloo on CPUs). Each stage checkpoints to ``<output_dir>/<stage>.pt`` every
``checkpoint_every`` steps and resumes from it; a finished stage (exported) is skipped, and says so.
Logs go to ``<output_dir>/log_<stage>.csv`` (step, seconds of training of that stage so far, counted
over every resume, loss terms, bpp, PSNR).

Stage 1, tokenizer (``AutoencoderKLWan``, or a pretrained one that is then only measured):
  L1 + ssim_weight * (1 - MS-SSIM) + kl_weight * KL on clips of 1 + 4k frames, and from
  ``gan_start`` on a hinge patch-GAN on the decoder output (discriminator trained from scratch;
  no pretrained perceptual network is available offline). Afterwards the per-channel latent
  mean/std are measured and stored in the VAE config, so the codec sees normalised latents.
Stage 2, latent codec: the tokenizer is frozen; clips are encoded to latents and the codec is
  unrolled over all latent frames with its recurrent memory; loss = bpp + lambda(q) * latent MSE,
  with q drawn per sample and lambda interpolated between the anchors' lambdas (as DCVC-FM).

The exported model (``<output_dir>/model``) is a complete GLVC folder, like the bundled one:
``tokenizer/`` (or, for a pretrained tokenizer, its name in ``glvc.json``), ``codec/``, ``glvc.json``
(the tokenizer source and ``tokenizer_segment``) and ``rate_table.json`` (bits per pixel measured at
the config's ``rate_table`` qualities on the example clips, :mod:`glvc.ratetable`). Files get the
modes of the umask (safetensors alone writes 0600).
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .defaults import normal_file_modes

DEFAULT_CONFIG = {
    "output_dir": "runs/default",
    "seed": 0,
    "amp": "bf16",  # bf16 autocast on CUDA; ignored on CPU
    "log_every": 20,
    "checkpoint_every": 200,
    "max_minutes": None,  # pause (checkpointed, resumable) after this wall time in one run
    # latent frames per tokenizer segment, written to the model's glvc.json (GLVC.segment; 0: the whole
    # clip in one causal pass); None: the codec's latent_cache "segment" if it has one, else 0
    "tokenizer_segment": None,
    # measured on the exported model (glvc.ratetable); "clips" None: the example clips; null: not measured
    "rate_table": {"clips": None, "qualities": [0, 7, 14, 21, 28, 35, 42, 49, 56, 63], "max_height": 240, "max_seconds": 2.0},
    "data": {"root": "data/train_set", "photo_fraction": 0.5},
    "tokenizer": {
        "pretrained": None,  # e.g. {"name_or_path": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "subfolder": "vae"}
        "config": {
            "base_dim": 32,
            "z_dim": 16,
            "dim_mult": [1, 2, 4],
            "num_res_blocks": 1,
            "temperal_downsample": [True, True],
            "patch_size": 2,
            "in_channels": 12,
            "out_channels": 12,
            "scale_factor_spatial": 8,
        },
        "steps": 2000,
        "batch": 8,
        "frames": 9,  # 1 + 4k; or a list of such, cycled step by step (mixed clip lengths, e.g. [9, 17, 33])
        "size": 128,
        "lr": 3e-4,
        "warmup": 100,
        "lr_floor": 0.1,  # the cosine schedule ends at this fraction of lr (0: decays to zero)
        "ema": None,  # decay of an exponential moving average of the weights, exported instead of them (e.g. 0.999)
        "l1_weight": 1.0,
        "ssim_weight": 0.2,
        "kl_weight": 1e-6,
        "minutes": None,  # time budget: the stage ends at `steps` or after this many minutes
        "gan_start": None,  # fraction of the stage (0..1) after which the patch GAN is on; None = never
        "gan_weight": 0.05,
        "stats_batches": 8,
    },
    "codec": {
        "config": {},
        "steps": 2000,
        "batch": 8,
        "frames": 17,
        "size": 256,
        "minutes": None,
        "lr": 2e-4,
        "rate_lr": None,  # learning rate of the anchors' log quantisation scales and hyper gains (None = lr)
        "warmup": 100,
        "aux_lr": 1e-3,
    },
}


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "config" else value
    return out


def load_config(path: str) -> dict:
    with open(path) as f:
        return merge(DEFAULT_CONFIG, json.load(f))


# ---------------------------------------------------------------------------- distributed
class Runtime:
    """Device, rank and world size; DDP when launched by torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = True
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        return module

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        t = torch.tensor([value], device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world


def autocast(rt: Runtime, cfg: dict):
    if rt.device.type == "cuda" and cfg.get("amp") == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def lr_at(step: int, base: float, warmup: int, progress: float, floor: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``floor`` x ``base`` as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def clip_lengths(frames) -> list[int]:
    """The tokenizer's ``frames`` setting as a list of clip lengths (each 1 + 4k)."""
    lengths = [int(f) for f in (frames if isinstance(frames, (list, tuple)) else [frames])]
    if not lengths or any(f < 1 or (f - 1) % 4 for f in lengths):
        raise ValueError(f"tokenizer frames must be 1 + 4k (or a list of such), got {frames}")
    return lengths


class StageClock:
    """A stage ends after ``steps`` or, when ``minutes`` is set, after that much training time,
    whichever comes first. ``progress`` (0 -> 1) drives the schedules either way."""

    def __init__(self, scfg: dict, step: int, elapsed: float = 0.0):
        self.steps = scfg["steps"]
        self.budget = 60.0 * scfg["minutes"] if scfg.get("minutes") else None
        self.elapsed_before = elapsed
        self.start = time.time()
        self.step = step

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.start

    @property
    def progress(self) -> float:
        by_steps = self.step / self.steps if self.steps else 1.0  # steps 0: nothing to train
        return max(by_steps, self.elapsed / self.budget) if self.budget else by_steps

    @property
    def done(self) -> bool:
        return self.progress >= 1.0


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """PSNR in dB of tensors in [-1, 1]."""
    mse = F.mse_loss(x.float().clamp(-1, 1), y.float()).item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


class Logger:
    """Appends one CSV row per log step to ``<output_dir>/log_<stage>.csv`` and echoes it."""

    def __init__(self, directory: str, enabled: bool):
        self.enabled = enabled
        self.directory = directory

    def log(self, stage: str, step: int, seconds: float, **values):
        """``seconds``: the stage's training time so far, over all resumes (StageClock.elapsed)."""
        if not self.enabled:
            return
        row = {"stage": stage, "step": step, "seconds": round(seconds, 1)}
        row.update({k: round(float(v), 6) for k, v in values.items()})
        path = os.path.join(self.directory, f"log_{stage}.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)


# ---------------------------------------------------------------------------- stage 1
class PatchDiscriminator(nn.Module):
    """A small 2-D PatchGAN applied to every frame: (N, 3, H, W) -> (N, 1, H/8, W/8) logits."""

    def __init__(self, channels: int = 64):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.GroupNorm(8, 4 * c), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 1, 3, 1, 1),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


def _frames2d(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) -> (B*T, 3, H, W)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3], x.shape[4])


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - MS-SSIM (3 scales, window 7) over all frames, or 1 - SSIM for crops under 97 px; inputs in [-1, 1]."""
    from pytorch_msssim import ms_ssim, ssim

    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return ssim_loss(x.float(), y.float())
    a = (_frames2d(x).float().clamp(-1, 1) + 1) / 2
    b = (_frames2d(y).float() + 1) / 2
    if min(a.shape[-2:]) > 96:  # pytorch_msssim asserts side > (win_size - 1) * 16
        return 1 - ms_ssim(a, b, data_range=1.0, weights=[0.2, 0.3, 0.5], win_size=7)
    return 1 - ssim(a, b, data_range=1.0, win_size=7)


class _VAEStep(nn.Module):
    """The VAE's training forward in one call (DDP syncs gradients only through forward)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor):
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample()
        x_hat = self.vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        return x_hat, kl


class _CodecUnroll(nn.Module):
    """The codec unrolled over every latent frame of a clip, with its recurrent memory."""

    def __init__(self, codec):
        super().__init__()
        self.codec = codec

    def forward(self, z: torch.Tensor, quality: torch.Tensor):
        """z (B, C, T', h, w) -> (bits (B,), mean latent MSE (B,))."""
        state = self.codec.initial_state()
        bits = z.new_zeros(z.shape[0])
        mse = z.new_zeros(z.shape[0])
        for t in range(z.shape[2]):
            result = self.codec(z[:, :, t], state, quality)
            state = result["state"]
            bits = bits + result["bits"]
            mse = mse + (result["z_hat"] - z[:, :, t]).pow(2).flatten(1).mean(1)
        return bits, mse / z.shape[2]


def run_stage(name: str, scfg: dict, cfg: dict, rt: Runtime, logger: Logger, ckpt_path: str, modules: dict, step_fn) -> bool:
    """The loop both stages share: resume, step, log, checkpoint, stop on steps/minutes.

    ``modules`` maps names to objects with ``state_dict``/``load_state_dict`` (models and
    optimisers) saved in the checkpoint; ``step_fn(step, progress)`` runs one optimisation
    step and returns the values to log. Returns True when the stage is complete, False when
    the session-wide ``max_minutes`` stopped it first (rerun to resume).
    """
    step, elapsed = 0, 0.0
    if os.path.isfile(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=rt.device, weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(ckpt[key])
        step, elapsed = ckpt["step"], ckpt.get("elapsed", 0.0)
    clock = StageClock(scfg, step, elapsed)
    session_start = time.time()
    if rt.main:
        where = f"resumed at step {step} ({elapsed / 60:.1f} min trained)" if step else "starting"
        budget = f" or {scfg['minutes']:g} min of training" if scfg.get("minutes") else ""
        pause = f"; this run pauses after {cfg['max_minutes']:g} min" if cfg.get("max_minutes") else ""
        print(f"{name}: {where}; runs to step {clock.steps}{budget}, whichever comes first{pause}; "
              f"a log line every {cfg['log_every']} steps, a checkpoint every {cfg['checkpoint_every']}", flush=True)

    def save():
        if rt.main:
            state = {key: module.state_dict() for key, module in modules.items()}
            state.update(step=clock.step, elapsed=clock.elapsed)
            torch.save(state, ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        rt.barrier()

    while not clock.done:
        values = step_fn(clock.step, clock.progress)
        clock.step += 1
        if clock.step % cfg["log_every"] == 0 or clock.done:
            logger.log(name, clock.step, clock.elapsed, **{k: rt.mean(v) for k, v in values.items()})
        paused = bool(cfg.get("max_minutes")) and time.time() - session_start > 60 * cfg["max_minutes"]
        if clock.step % cfg["checkpoint_every"] == 0 or clock.done or paused:
            save()
        if paused and not clock.done:
            if rt.main:
                print(f"{name}: paused at step {clock.step} (max_minutes); rerun to resume", flush=True)
            return False
    return True


def train_tokenizer(cfg: dict, rt: Runtime, data, logger: Logger):
    """Stage 1. Returns the trained VAE (eval mode, latent statistics set), or None if paused."""
    from diffusers import AutoencoderKLWan

    tcfg = cfg["tokenizer"]
    out = os.path.join(cfg["output_dir"], "model", "tokenizer")
    if tcfg.get("pretrained"):
        src = tcfg["pretrained"]
        if rt.main:
            print(f"tokenizer: pretrained ({src['name_or_path']}), not trained", flush=True)
        return AutoencoderKLWan.from_pretrained(src["name_or_path"], subfolder=src.get("subfolder"), torch_dtype=torch.float32)
    if os.path.isfile(os.path.join(out, "config.json")):
        if rt.main:
            print(f"tokenizer: already trained and exported to {out}: skipped (remove that folder to train it again)", flush=True)
        return AutoencoderKLWan.from_pretrained(out, torch_dtype=torch.float32)
    torch.manual_seed(cfg["seed"])
    if tcfg.get("init_from"):  # fine-tune an exported tokenizer (e.g. on longer clips)
        vae = AutoencoderKLWan.from_pretrained(tcfg["init_from"], torch_dtype=torch.float32).to(rt.device).train()
        vae.requires_grad_(True)
    else:
        vae = AutoencoderKLWan(**tcfg["config"]).to(rt.device)
    disc = PatchDiscriminator().to(rt.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=tcfg["lr"], betas=(0.9, 0.99), weight_decay=1e-4)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=tcfg["lr"], betas=(0.5, 0.99))
    model, disc_model = rt.wrap(_VAEStep(vae)), rt.wrap(disc)
    lengths = clip_lengths(tcfg["frames"])  # cycled step by step: every length equally often, the same on every rank
    ema = None
    if tcfg.get("ema"):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(vae, multi_avg_fn=get_ema_multi_avg_fn(float(tcfg["ema"])), use_buffers=True)

    def step_fn(step: int, progress: float) -> dict:
        lr = lr_at(step, tcfg["lr"], tcfg["warmup"], progress, tcfg.get("lr_floor", 0.1))
        for group in opt.param_groups:
            group["lr"] = lr
        x = data.sample(tcfg["batch"], lengths[step % len(lengths)], tcfg["size"])
        use_gan = tcfg.get("gan_start") is not None and progress >= tcfg["gan_start"]
        with autocast(rt, cfg):
            x_hat, kl = model(x)
            fake_logits = disc_model(_frames2d(x_hat)) if use_gan else None
        # losses in float32: SSIM's local variances cancel catastrophically in bf16 (measured: NaN within 100 steps)
        x_hat, kl = x_hat.float(), kl.float()
        l1 = (x_hat - x).abs().mean()
        ss = ssim_loss(x_hat, x)
        loss = tcfg["l1_weight"] * l1 + tcfg["ssim_weight"] * ss + tcfg["kl_weight"] * kl
        g_loss = -fake_logits.float().mean() if use_gan else torch.zeros((), device=rt.device)
        loss = loss + tcfg["gan_weight"] * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema.update_parameters(vae)
        d_loss = torch.zeros(())
        if use_gan:
            with autocast(rt, cfg):
                real = disc_model(_frames2d(x)).float()
                fake = disc_model(_frames2d(x_hat.detach())).float()
                d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
        return dict(loss=loss.item(), l1=l1.item(), ssim_loss=ss.item(), kl=kl.item(), g_loss=g_loss.item(),
                    d_loss=d_loss.item(), psnr=psnr(x_hat, x), lr=lr, frames=x.shape[2])

    modules = {"model": vae, "disc": disc, "opt": opt, "opt_d": opt_d, **({"ema": ema} if ema is not None else {})}
    if not run_stage("tokenizer", tcfg, cfg, rt, logger, os.path.join(cfg["output_dir"], "tokenizer.pt"), modules, step_fn):
        return None
    if ema is not None:  # export the average (Cosmos and others train with an EMA of the weights)
        vae.load_state_dict(ema.module.state_dict())
    vae.eval()
    set_latent_statistics(vae, data, tcfg, rt)
    if rt.main:
        # float16 weights: half the size; loaded back as float32 (the values are exactly representable)
        vae.to(torch.float16).save_pretrained(out)
        vae.to(torch.float32)
        normal_file_modes(out)
    rt.barrier()
    return AutoencoderKLWan.from_pretrained(out, torch_dtype=torch.float32).to(rt.device)


@torch.no_grad()
def set_latent_statistics(vae, data, tcfg: dict, rt: Runtime) -> None:
    """Measure the per-channel mean/std of the posterior mean and store them in the VAE config."""
    from .tokenizer import Tokenizer

    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    tok = Tokenizer(vae, device=rt.device)
    latents = torch.cat(
        [tok.encode(data.sample(tcfg["batch"], max(clip_lengths(tcfg["frames"])), tcfg["size"])).transpose(0, 1).flatten(1)
         for _ in range(tcfg["stats_batches"])],
        dim=1,
    )
    mean = latents.mean(1)
    std = latents.std(1).clamp_min(1e-3)
    vae.register_to_config(latents_mean=[round(v, 5) for v in mean.tolist()], latents_std=[round(v, 5) for v in std.tolist()])


class LatentCache:
    """Tokenizer latents computed once, for codec training where the tokenizer dominates the cost (CPU).

    Built from ``samples`` clips of ``frames`` x ``size`` px from the training sampler and saved to
    ``latents.pt``; ``sample`` draws random ``crop`` x ``crop`` latent windows with random flips:
    (B, C, T', crop, crop) float32.
    """

    def __init__(self, latents: torch.Tensor, crop: int, device):
        self.latents = latents  # (N, C, T', h, w) float16
        self.crop = crop
        self.device = device

    @classmethod
    @torch.no_grad()
    def build(cls, spec: dict, tok, data, path: str, rt: Runtime) -> "LatentCache":
        if os.path.isfile(path):
            latents = torch.load(path, map_location="cpu")
        else:
            chunks = []
            segment = spec.get("segment", 0)  # latent frames per tokenizer segment, as GLVC(segment=...) codes
            length = 1 + 4 * (segment - 1) if segment else spec["frames"]
            if spec["frames"] % length:
                raise ValueError(f"latent_cache frames {spec['frames']} is not a multiple of the segment length {length}")
            for start in range(0, spec["samples"], spec["batch"]):
                drawn = 1 + 4 * -(-(spec["frames"] - 1) // 4)  # the sampler draws 1 + 4k frames
                x = data.sample(min(spec["batch"], spec["samples"] - start), drawn, spec["size"])[:, :, : spec["frames"]]
                parts = [tok.encode(x[:, :, i : i + length]) for i in range(0, spec["frames"], length)]
                chunks.append(torch.cat(parts, dim=2).half().cpu())
                if rt.main:
                    print(f"latent cache: {start + x.shape[0]}/{spec['samples']} clips", flush=True)
            latents = torch.cat(chunks)
            if rt.main:
                torch.save(latents, path)
        return cls(latents, spec["crop"], rt.device)

    def sample(self, batch: int) -> torch.Tensor:
        n, _, _, h, w = self.latents.shape
        out = []
        for i in torch.randint(n, (batch,)).tolist():
            top = random.randint(0, h - self.crop)
            left = random.randint(0, w - self.crop)
            z = self.latents[i, :, :, top : top + self.crop, left : left + self.crop]
            out.append(z.flip(-1) if random.random() < 0.5 else z)
        return torch.stack(out).to(self.device, torch.float32)


def build_codec(ccfg: dict, latent_channels: int):
    """The codec that the ``codec`` section of a config trains, before training: new, or loaded from
    ``init_from`` with ``config`` as overrides (fine-tuning). Trainable, on the CPU."""
    from .codec import LatentCodec

    if ccfg.get("init_from"):  # fine-tune an exported codec (new lambdas or a new tokenizer)
        codec = LatentCodec.from_pretrained(ccfg["init_from"], config_overrides=ccfg["config"])
        codec.requires_grad_(True)
        return codec.train()
    return LatentCodec(latent_channels=latent_channels, **ccfg["config"])


def export_codec_checkpoint(run_dir: str, out: str) -> None:
    """Export the codec of a training run's latest checkpoint (``<run_dir>/codec.pt``, written every
    ``checkpoint_every`` steps) to ``out`` as ``from_pretrained`` reads it: to evaluate a run that is
    still going. Uses the run's own ``config.json``; the tokenizer is not needed (the codec's latent
    channels come from its config or the checkpoint)."""
    cfg = load_config(os.path.join(run_dir, "config.json"))
    ckpt = torch.load(os.path.join(run_dir, "codec.pt"), map_location="cpu", weights_only=False)
    latent_channels = ckpt["model"]["synthesis_out.weight"].shape[0]
    codec = build_codec(cfg["codec"], latent_channels)
    codec.load_state_dict(ckpt["model"])
    codec.eval().save_pretrained(out)
    normal_file_modes(out)
    print(f"exported the codec at step {ckpt['step']} ({ckpt.get('elapsed', 0) / 60:.1f} min trained) to {out}")


def train_codec(cfg: dict, rt: Runtime, data, logger: Logger, vae):
    """Stage 2 on the frozen tokenizer. Returns the trained codec, or None if paused."""
    from .codec import LatentCodec
    from .tokenizer import Tokenizer

    ccfg = cfg["codec"]
    out = os.path.join(cfg["output_dir"], "model", "codec")
    if os.path.isfile(os.path.join(out, "config.json")):
        if rt.main:
            print(f"codec: already trained and exported to {out}: skipped (remove that folder to train it again)", flush=True)
        return LatentCodec.from_pretrained(out)
    torch.manual_seed(cfg["seed"] + 1)
    tok = Tokenizer(vae, device=rt.device)
    codec = build_codec(ccfg, tok.latent_channels).to(rt.device).train()
    latents = LatentCache.build(ccfg["latent_cache"], tok, data, os.path.join(cfg["output_dir"], "latents.pt"), rt) if ccfg.get("latent_cache") else None
    aux_params = [p for n, p in codec.named_parameters() if n.endswith(".quantiles")]
    # the per-anchor log scales and gains move the rate a long way; `rate_lr` lets them move faster
    rate_names = ("log_quant_scale", "log_hyper_gain", "log_hyper_scale")
    rate_params = [p for n, p in codec.named_parameters() if n in rate_names]
    other_params = [p for n, p in codec.named_parameters() if n not in rate_names and not n.endswith(".quantiles")]
    rate_lr_factor = (ccfg.get("rate_lr") or ccfg["lr"]) / ccfg["lr"]
    main_params = other_params + rate_params
    opt = torch.optim.AdamW(
        [{"params": other_params, "lr_factor": 1.0}, {"params": rate_params, "lr_factor": rate_lr_factor}],
        lr=ccfg["lr"], weight_decay=0.0,
    )
    opt_aux = torch.optim.Adam(aux_params, lr=ccfg["aux_lr"]) if aux_params else None
    model = rt.wrap(_CodecUnroll(codec))
    levels = codec.max_quality
    size = latents.crop * tok.spatial_stride if latents else ccfg["size"]
    pixels_per_sample = ccfg["frames"] * size**2

    def step_fn(step: int, progress: float) -> dict:
        lr = lr_at(step, ccfg["lr"], ccfg["warmup"], progress)
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_factor"]
        if latents is not None:
            z = latents.sample(ccfg["batch"])
        else:
            x = data.sample(ccfg["batch"], ccfg["frames"], ccfg["size"])
            with torch.no_grad(), autocast(rt, cfg):
                z = tok.encode(x).float()  # (B, C, T', h, w), normalised
        quality = torch.rand(z.shape[0]) * levels
        lam = codec.rd_lambda(quality).to(rt.device)
        bits, mse = model(z, quality.to(rt.device))  # float32: the entropy model is sensitive to precision
        bpp = bits / pixels_per_sample
        loss = (bpp + lam * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main_params, 1.0)
        opt.step()
        values = dict(loss=loss.item(), bpp=bpp.mean().item(), latent_mse=mse.mean().item(), lr=lr)
        if opt_aux is not None:  # the EntropyBottleneck's quantiles (none with hyper_prior "gaussian")
            aux = codec.aux_loss()
            opt_aux.zero_grad(set_to_none=True)
            aux.backward()
            opt_aux.step()
            values["aux"] = aux.item()
        for label, mask in (("low_q", quality < levels / 3), ("high_q", quality > 2 * levels / 3)):
            mask = mask.to(bpp.device)
            values[f"bpp_{label}"] = bpp[mask].mean().item() if mask.any() else float("nan")
            values[f"mse_{label}"] = mse[mask].mean().item() if mask.any() else float("nan")
        return values

    modules = {"model": codec, "opt": opt, **({"opt_aux": opt_aux} if opt_aux else {})}
    if not run_stage("codec", ccfg, cfg, rt, logger, os.path.join(cfg["output_dir"], "codec.pt"), modules, step_fn):
        return None
    codec.eval()
    if rt.main:
        codec.cpu().save_pretrained(out)
        normal_file_modes(out)
    rt.barrier()
    return codec


def train(cfg: dict) -> str | None:
    """Run both stages; returns the exported model folder, or None when a stage stopped early."""
    from .data.dataset import TrainSet

    rt = Runtime()
    random.seed(cfg["seed"] + rt.rank)
    os.makedirs(cfg["output_dir"], exist_ok=True)
    if rt.main:
        config_path = os.path.join(cfg["output_dir"], "config.json")
        if os.path.isfile(config_path):
            with open(config_path) as f:
                changed = changed_keys(json.load(f), cfg)
            if changed:
                print(f"note: the config differs from the one {cfg['output_dir']} last ran with ({', '.join(changed)}): "
                      "a stage already exported is kept as it is (remove <output_dir>/model/<stage>, or use a new "
                      "--output-dir, to train it again); a stage in progress resumes from its checkpoint with the new values",
                      flush=True)
        with open(config_path, "w") as f:
            json.dump(cfg, f, indent=2)
    data = TrainSet(cfg["data"]["root"], device=rt.device, seed=cfg["seed"] + rt.rank,
                    **{k: v for k, v in cfg["data"].items() if k != "root"})
    logger = Logger(cfg["output_dir"], rt.main)
    vae = train_tokenizer(cfg, rt, data, logger)
    if vae is None:
        return None
    vae = vae.to(rt.device).eval().requires_grad_(False)
    codec = train_codec(cfg, rt, data, logger, vae)
    if codec is None:
        return None
    folder = os.path.join(cfg["output_dir"], "model")
    if rt.main:
        export_model_files(cfg, folder, rt.device)
    rt.barrier()
    return folder


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (``max_minutes`` and ``output_dir`` left out:
    they say how and where this run goes, not what it trains)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and key in ("max_minutes", "output_dir"):
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def tokenizer_segment(cfg: dict) -> int:
    """The ``tokenizer_segment`` of the exported model (see DEFAULT_CONFIG)."""
    if cfg.get("tokenizer_segment") is not None:
        return int(cfg["tokenizer_segment"])
    return int((cfg["codec"].get("latent_cache") or {}).get("segment", 0))


def export_model_files(cfg: dict, folder: str, device) -> None:
    """Write what the model folder needs beside ``tokenizer/`` and ``codec/``: ``glvc.json`` and
    ``rate_table.json`` (measured with :func:`glvc.ratetable.write_rate_table` unless the config's
    ``rate_table`` is null; kept when it was measured on this very model)."""
    from .defaults import RATE_TABLE_NAME
    from .pipeline import GLVC_CONFIG_NAME, GLVC
    from .ratetable import RATE_TABLE_VERSION, write_rate_table

    config = {"tokenizer_segment": tokenizer_segment(cfg)}
    if cfg["tokenizer"].get("pretrained"):
        config["tokenizer"] = cfg["tokenizer"]["pretrained"]
    with open(os.path.join(folder, GLVC_CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2)
    spec = cfg.get("rate_table")
    path = os.path.join(folder, RATE_TABLE_NAME)
    if not spec:
        print(f"rate table: not measured (the config's rate_table is null); python scripts/rate_table.py --model {folder} "
              "measures it", flush=True)
        return
    model = GLVC.from_pretrained(folder, device=device)
    if os.path.isfile(path):
        with open(path) as f:
            try:
                old = json.load(f)
            except ValueError:
                old = {}
        if old.get("version") == RATE_TABLE_VERSION and old.get("model_fingerprint") == model.fingerprint.hex() \
                and old.get("qualities") == sorted({int(q) for q in spec["qualities"]}):
            print(f"rate table: {path} already measured on this model: kept", flush=True)
            return
    clips = spec.get("clips")
    print(f"rate table: measuring {len(clips) if clips else 'the 3 example'} clips at {len(spec['qualities'])} quality "
          f"indices ({spec['max_height']}p, {spec['max_seconds']:g} s)", flush=True)
    write_rate_table(model, path, clips, spec["qualities"], spec["max_height"], spec["max_seconds"],
                     command="python -m glvc train (the config's rate_table)", log=lambda line: print(f"rate table: {line}", flush=True))
    normal_file_modes(folder)
