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

Stopping and resuming. SIGINT (Ctrl-C) and SIGTERM (``timeout``, a scheduler) stop a stage with a
checkpoint: a signal during a step's forward and backward passes abandons that step at once (no
weight has changed yet), one during the optimiser updates, logging or a checkpoint lets that finish
first; a second Ctrl-C stops at once without a checkpoint. A checkpoint holds the step, the training
time, every model and optimiser state and the random state of each rank (python ``random``, torch's
generators, the data sampler's), so a resumed stage draws the samples it would have drawn; on
resume the stage's log is cut back to the checkpoint's step. A run folder that this invocation
made and that holds nothing to resume (no checkpoint, cache or export) is removed when it fails.

What a stage exports or caches is checked before it is written and again before a rerun reuses it
(weights and latent statistics finite, a latent cache of the shape its spec gives, made by this very
tokenizer and engine); a checkpoint whose weights are not finite is never written. A refusal names
the file to delete.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .defaults import normal_file_modes

DEFAULT_CONFIG = {
    "description": None,  # free text: what the config is for and what hardware it is sized for (not used)
    "output_dir": "runs/default",
    "seed": 0,
    "amp": "bf16",  # bf16 autocast on CUDA; ignored on CPU
    "log_every": 20,
    "checkpoint_every": 200,
    "progress_seconds": 60,  # a progress line (not a log row) when this long passed without a line
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

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on one."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order (on every rank)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


# ---------------------------------------------------------------------------- stopping on a signal
class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM (``signum``). A KeyboardInterrupt, so that callers that
    stop on Ctrl-C (the command line: status 130) stop on it too. ``forced``: a second Ctrl-C, no
    checkpoint; ``reported``: the line saying what was saved has been printed."""

    def __init__(self, signum: int, forced: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.forced, self.reported = signum, forced, False


class Interrupts:
    """SIGINT and SIGTERM handlers for the duration of a training run (a ``with`` block; installed only
    in the main thread, the only one Python delivers signals to).

    A signal raises :class:`TrainingInterrupted` at once while ``abortable`` is True (between steps'
    critical parts, see :func:`run_stage`), else it is kept in ``received`` for the loop to act on at
    the end of the step. A second SIGINT raises at once either way; a later SIGTERM is ignored (torchrun
    sends one to its workers after the terminal's SIGINT reached them)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.abortable = True
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:  # Ctrl-C again: the user does not want to wait
                raise TrainingInterrupted(signum, forced=True)
            return  # e.g. torchrun's SIGTERM after the terminal's SIGINT: already stopping
        self.received = signum
        if self.abortable:
            raise TrainingInterrupted(signum)

    def critical(self, *args) -> None:
        """From here to the end of the step a signal waits (an optimiser's step pre-hook calls this)."""
        self.abortable = False

    def allow(self) -> None:
        """Signals act at once again; one received while they waited raises now."""
        self.abortable = True
        if self.received is not None:
            raise TrainingInterrupted(self.received)


def rng_state(data, device: torch.device) -> dict:
    """Every random state a training step draws from: python ``random``, torch's CPU (and this CUDA
    device's) generator, and the data sampler's (:meth:`glvc.data.dataset.TrainSet.rng_state`)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    if data is not None:
        state["data"] = data.rng_state()
    return state


def set_rng_state(state: dict, data, device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    if data is not None and "data" in state:
        data.set_rng_state(state["data"])


def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]


def _names(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


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

    def truncate(self, stage: str, step: int) -> None:
        """Drop the rows after ``step`` (logged by a run that stopped before its next checkpoint), so that
        a resumed stage does not log those steps a second time with other values."""
        path = os.path.join(self.directory, f"log_{stage}.csv")
        if not self.enabled or not os.path.isfile(path):
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        column = rows[0].index("step") if "step" in rows[0] else 1

        def kept(row: list[str]) -> bool:
            try:
                return len(row) == len(rows[0]) and int(float(row[column])) <= step
            except ValueError:  # a row cut short by a forced stop
                return False

        body = [row for row in rows[1:] if kept(row)]
        if len(body) == len(rows) - 1:
            return
        with open(path + ".tmp", "w", newline="") as f:
            csv.writer(f).writerows([rows[0], *body])
        os.replace(path + ".tmp", path)
        print(f"{stage}: {path}: {len(rows) - 1 - len(body)} rows after step {step} removed (logged after the last "
              "checkpoint; those steps run again)", flush=True)

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


def load_checkpoint(name: str, ckpt_path: str, modules: dict, device) -> dict:
    """Load a stage's checkpoint into ``modules``; refuse, naming the file to delete, one that cannot be
    read, does not fit these modules, or holds weights that are not finite."""
    try:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    except Exception as err:  # a truncated or foreign file: zip, pickle and EOF errors
        raise RuntimeError(f"{name}: the checkpoint {ckpt_path} cannot be read ({str(err).splitlines()[0]}): "
                           "delete it to train the stage from the start") from err
    bad = non_finite(ckpt.get("model", {}))
    if bad:
        raise RuntimeError(f"{name}: the checkpoint {ckpt_path} (step {ckpt.get('step')}) holds weights that are not "
                           f"finite ({_names(bad)}): delete it to train the stage from the start")
    try:
        for key, module in modules.items():
            module.load_state_dict(ckpt[key])
    except (KeyError, RuntimeError, ValueError) as err:
        raise RuntimeError(f"{name}: the checkpoint {ckpt_path} does not fit this config's {name} "
                           f"({str(err).splitlines()[0]}): use another --output-dir, or delete it to train the stage "
                           "from the start") from err
    return ckpt


def run_stage(name: str, scfg: dict, cfg: dict, rt: Runtime, logger: Logger, ckpt_path: str, modules: dict, step_fn,
              data=None, interrupts: Interrupts | None = None) -> bool:
    """The loop both stages share: resume, step, log, checkpoint, stop on steps/minutes or a signal.

    ``modules`` maps names to objects with ``state_dict``/``load_state_dict`` (models and
    optimisers; ``"model"``'s weights must stay finite) saved in the checkpoint; ``step_fn(step,
    progress)`` runs one optimisation step and returns the values to log; ``data`` is the sampler
    whose random state the checkpoint keeps. Returns True when the stage is complete, False when
    the session-wide ``max_minutes`` stopped it first (rerun to resume). On a signal (``interrupts``,
    see the module docstring) it saves a checkpoint and raises :class:`TrainingInterrupted`.
    """
    interrupts = interrupts or Interrupts()  # not entered: no handlers, nothing received
    interrupts.abortable = False  # until a step's forward pass: a signal is acted on at the first step's end
    step, elapsed = 0, 0.0
    if os.path.isfile(ckpt_path):
        ckpt = load_checkpoint(name, ckpt_path, modules, rt.device)
        step, elapsed = ckpt["step"], ckpt.get("elapsed", 0.0)
        states = ckpt.get("rng")
        if states is not None and len(states) == rt.world:
            set_rng_state(states[rt.rank], data, rt.device)
        elif rt.main:
            had = f"{len(states)} ranks" if states is not None else "no random state (an older checkpoint)"
            print(f"{name}: note: the checkpoint has {had}, this run {rt.world}: sampling starts afresh from the seed",
                  flush=True)
    if rt.main:
        logger.truncate(name, step)
    clock = StageClock(scfg, step, elapsed)
    session_start, session_step, session_elapsed = time.time(), step, elapsed
    if rt.main:
        where = f"resumed at step {step} ({elapsed / 60:.1f} min trained)" if step else "starting"
        budget = f" or {scfg['minutes']:g} min of training" if scfg.get("minutes") else ""
        pause = f"; this run pauses after {cfg['max_minutes']:g} min" if cfg.get("max_minutes") else ""
        print(f"{name}: {where}; runs to step {clock.steps}{budget}, whichever comes first{pause}; "
              f"a log line every {cfg['log_every']} steps, a checkpoint every {cfg['checkpoint_every']}; "
              "Ctrl-C saves a checkpoint and stops", flush=True)

    def save(at_step: int, at_elapsed: float, rng: dict):
        bad = non_finite(modules["model"].state_dict())  # every rank: the weights are the same on all
        if bad:
            kept = f"the last checkpoint {ckpt_path} is kept" if os.path.isfile(ckpt_path) else "no checkpoint was written"
            raise RuntimeError(f"{name}: the weights are not finite at step {at_step} ({_names(bad)}): training diverged; "
                               f"{kept}. Lower {name}.lr (now {scfg['lr']:g}) and run again (delete {ckpt_path} to start "
                               "the stage afresh)")
        states = rt.gather(rng)
        if rt.main:
            state = {key: module.state_dict() for key, module in modules.items()}
            state.update(step=at_step, elapsed=at_elapsed, rng=states)
            torch.save(state, ckpt_path + ".tmp")
            os.replace(ckpt_path + ".tmp", ckpt_path)
        rt.barrier()
        return at_step

    def stopped(signum: int, at_step: int, at_elapsed: float) -> TrainingInterrupted:
        err = TrainingInterrupted(signum)
        if rt.main:
            print(f"{name}: stopped by {signal.Signals(signum).name} at step {at_step} ({at_elapsed / 60:.1f} min trained); "
                  f"checkpoint {ckpt_path}: run the same command to resume from there", flush=True)
            err.reported = True
        return err

    # an optimiser about to change weights ends the part of a step that a signal may abandon
    hooks = [m.register_step_pre_hook(interrupts.critical) for m in modules.values() if isinstance(m, torch.optim.Optimizer)]
    saved_step, done_elapsed, last_line = None, elapsed, time.monotonic()
    try:
        while not clock.done:
            rng_before = rng_state(data, rt.device)
            interrupts.abortable = rt.world == 1 and bool(hooks)  # under DDP every rank stops at the same step end
            try:
                values = step_fn(clock.step, clock.progress)
            except TrainingInterrupted as err:
                if err.forced:
                    raise
                # abandoned in its forward/backward passes: no weight, optimiser state or EMA changed
                interrupts.abortable = False
                save(clock.step, done_elapsed, rng_before)
                raise stopped(err.signum, clock.step, done_elapsed) from None
            finally:
                interrupts.abortable = False
            clock.step += 1
            done_elapsed = clock.elapsed
            if clock.step % cfg["log_every"] == 0 or clock.done:
                logger.log(name, clock.step, done_elapsed, **{k: rt.mean(v) for k, v in values.items()})
                last_line = time.monotonic()
            elif rt.main and time.monotonic() - last_line >= cfg.get("progress_seconds", 60):
                pace = (done_elapsed - session_elapsed) / (clock.step - session_step)
                print(f"{name}: step {clock.step} of {clock.steps} ({done_elapsed / 60:.1f} min trained, {pace:.1f} s a step); "
                      f"next log line at step {(clock.step // cfg['log_every'] + 1) * cfg['log_every']}, next checkpoint "
                      f"at step {(clock.step // cfg['checkpoint_every'] + 1) * cfg['checkpoint_every']}", flush=True)
                last_line = time.monotonic()
            paused = bool(cfg.get("max_minutes")) and time.time() - session_start > 60 * cfg["max_minutes"]
            if clock.step % cfg["checkpoint_every"] == 0 or clock.done or paused:
                saved_step = save(clock.step, done_elapsed, rng_state(data, rt.device))
            if rt.any(interrupts.received is not None):
                if saved_step != clock.step:
                    saved_step = save(clock.step, done_elapsed, rng_state(data, rt.device))
                raise stopped(interrupts.received or signal.SIGTERM, clock.step, done_elapsed)
            if paused and not clock.done:
                if rt.main:
                    print(f"{name}: paused at step {clock.step} (max_minutes); rerun to resume", flush=True)
                interrupts.abortable = True
                return False
    finally:
        for hook in hooks:
            hook.remove()
    interrupts.allow()
    return True


def train_tokenizer(cfg: dict, rt: Runtime, data, logger: Logger, interrupts: Interrupts | None = None):
    """Stage 1. Returns the trained VAE (eval mode, latent statistics set), or None if paused."""
    from diffusers import AutoencoderKLWan

    tcfg = cfg["tokenizer"]
    out = os.path.join(cfg["output_dir"], "model", "tokenizer")
    if tcfg.get("pretrained"):
        src = tcfg["pretrained"]
        if rt.main:
            print(f"tokenizer: pretrained ({src['name_or_path']}), not trained", flush=True)
        from .tokenizer import load_tokenizer

        return load_tokenizer(src["name_or_path"], subfolder=src.get("subfolder")).vae  # any family
    ckpt_path = os.path.join(cfg["output_dir"], "tokenizer.pt")
    if os.path.isfile(os.path.join(out, "config.json")):
        vae = load_export("tokenizer", out, ckpt_path, lambda: AutoencoderKLWan.from_pretrained(out, torch_dtype=torch.float32),
                          tokenizer_export_problems)
        if rt.main:
            print(f"tokenizer: already trained and exported to {out}: skipped (remove that folder to train it again)", flush=True)
        return vae
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
    if not run_stage("tokenizer", tcfg, cfg, rt, logger, ckpt_path, modules, step_fn, data, interrupts):
        return None
    if ema is not None:  # export the average (Cosmos and others train with an EMA of the weights)
        vae.load_state_dict(ema.module.state_dict())
    vae.eval()
    if rt.main:
        print(f"tokenizer: measuring the latent statistics on {tcfg['stats_batches']} batches", flush=True)
    set_latent_statistics(vae, data, tcfg, rt)
    # float16 weights: half the size; loaded back as float32 (exact, unless a weight overflows float16: checked)
    vae.to(torch.float16)
    problems = tokenizer_export_problems(vae) if rt.main else []
    if rt.any(bool(problems)):
        raise RuntimeError(f"tokenizer: not exported to {out}: {'; '.join(problems) or 'see rank 0'}. These weights are "
                           f"{ckpt_path}'s: delete it to train the stage again (a lower tokenizer.lr than "
                           f"{tcfg['lr']:g} may avoid this)")
    if rt.main:
        save_export(vae, out)
    vae.to(torch.float32)
    rt.barrier()
    return AutoencoderKLWan.from_pretrained(out, torch_dtype=torch.float32).to(rt.device)


def save_export(module, out: str) -> None:
    """``module.save_pretrained(out)``, written whole or not at all (into ``<out>.partial``, then renamed),
    with the umask's file modes."""
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    module.save_pretrained(partial)
    normal_file_modes(partial)
    if os.path.isdir(out):  # what an older, interrupted export left (no config.json, or refused)
        shutil.rmtree(out)
    os.replace(partial, out)


def tokenizer_export_problems(vae) -> list[str]:
    """Why an exported tokenizer cannot be used: weights that are not finite, ``latents_mean``/``latents_std``
    that are not finite, not one per latent channel (``z_dim``), or a std <= 0. Empty when usable."""
    problems = []
    bad = non_finite(vae.state_dict())
    if bad:
        problems.append(f"weights not finite ({_names(bad)})")
    channels = getattr(vae.config, "z_dim", None)
    for key in ("latents_mean", "latents_std"):
        values = getattr(vae.config, key, None)
        if values is None:
            continue
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if channels is not None and t.numel() != channels:
            problems.append(f"{key} has {t.numel()} values for {channels} latent channels")
        if not torch.isfinite(t).all():
            problems.append(f"{key} has {int((~torch.isfinite(t)).sum())} of {t.numel()} values not finite: "
                            f"{[round(v, 5) for v in t.tolist()][:4]}...")
        elif key == "latents_std" and (t <= 0).any():
            problems.append(f"latents_std has values <= 0: {t.min().item():g}")
    return problems


def codec_export_problems(codec) -> list[str]:
    """Why an exported latent codec cannot be used: weights that are not finite. Empty when usable."""
    bad = non_finite(codec.state_dict())
    return [f"weights not finite ({_names(bad)})"] if bad else []


def load_export(name: str, out: str, ckpt_path: str, load, problems_of):
    """A stage's export for a rerun to reuse: ``load()`` it and check it with ``problems_of``; refuse,
    saying what to delete, one that cannot be loaded or used."""
    redo = (f"delete it to export the stage again from its checkpoint {ckpt_path}" if os.path.isfile(ckpt_path)
            else "delete it to train the stage again")
    try:
        module = load()
    except Exception as err:  # a half-written folder: missing weights, a broken config
        raise RuntimeError(f"{name}: the export {out} cannot be loaded ({str(err).splitlines()[0]}): {redo}") from err
    problems = problems_of(module)
    if problems:
        raise RuntimeError(f"{name}: the export {out} is not usable ({'; '.join(problems)}): {redo}")
    return module


@torch.no_grad()
def set_latent_statistics(vae, data, tcfg: dict, rt: Runtime) -> None:
    """Measure the per-channel mean/std of the posterior mean and store them in the VAE config."""
    from .tokenizer import tokenizer_for

    vae.register_to_config(latents_mean=[0.0] * vae.config.z_dim, latents_std=[1.0] * vae.config.z_dim)
    tok = tokenizer_for(vae, device=rt.device)
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
    ``latents.pt`` with what made them (the spec's ``samples``, ``frames``, ``size``, ``segment``, a
    digest of the tokenizer's config and weights, its engine); a rerun reuses the file only when all of
    these match and the latents are finite and of the shape they give, and otherwise refuses, naming the
    file to delete. ``sample`` draws random ``crop`` x ``crop`` latent windows with random flips:
    (B, C, T', crop, crop) float32.
    """

    FORMAT = 1  # latents.pt: {"format", "latents", "spec", "tokenizer_sha256", "engine"}; a bare tensor before

    def __init__(self, latents: torch.Tensor, crop: int, device):
        self.latents = latents  # (N, C, T', h, w) float16
        self.crop = crop
        self.device = device

    @staticmethod
    def layout(spec: dict, tok) -> tuple[int, tuple[int, int, int, int, int]]:
        """(pixel frames per tokenizer pass, the cache's shape (samples, C, T', h, w)) for a spec and tokenizer."""
        segment = spec.get("segment", 0)  # latent frames per tokenizer segment, as GLVC(segment=...) codes
        stride = tok.temporal_stride
        length = 1 + stride * (segment - 1) if segment else spec["frames"]
        if spec["frames"] % length:
            raise ValueError(f"latent_cache frames {spec['frames']} is not a multiple of the segment length {length}")
        side = spec["size"] // tok.spatial_stride
        if spec["size"] % tok.spatial_stride or not 0 < spec["crop"] <= side:
            raise ValueError(f"latent_cache size {spec['size']} must be a multiple of the tokenizer's spatial stride "
                             f"{tok.spatial_stride}, and crop {spec['crop']} between 1 and {side} latent pixels")
        latent_frames = spec["frames"] // length * (1 + (length - 1) // stride)
        return length, (spec["samples"], tok.latent_channels, latent_frames, side, side)

    @staticmethod
    def identity(spec: dict, tok) -> dict:
        """What made a cache, as saved beside its latents."""
        return {"spec": {k: spec.get(k, 0 if k == "segment" else None) for k in ("samples", "frames", "size", "segment")},
                "tokenizer_sha256": module_digest(tok.vae),
                "engine": tok.engine if tok.device.type == "cpu" else tok.device.type}

    @classmethod
    @torch.no_grad()
    def build(cls, spec: dict, tok, data, path: str, rt: Runtime) -> "LatentCache":
        length, shape = cls.layout(spec, tok)
        made_by = cls.identity(spec, tok)
        if os.path.isfile(path):
            return cls(cls.load(path, shape, made_by, rt), spec["crop"], rt.device)
        chunks = []
        for start in range(0, spec["samples"], spec["batch"]):
            drawn = 1 + 4 * -(-(spec["frames"] - 1) // 4)  # the sampler draws 1 + 4k frames
            x = data.sample(min(spec["batch"], spec["samples"] - start), drawn, spec["size"])[:, :, : spec["frames"]]
            parts = [tok.encode(x[:, :, i : i + length]) for i in range(0, spec["frames"], length)]
            chunks.append(torch.cat(parts, dim=2).half().cpu())
            if rt.main:
                print(f"latent cache: {start + x.shape[0]}/{spec['samples']} clips", flush=True)
        latents = torch.cat(chunks)
        bad = int((~torch.isfinite(latents)).sum())
        if bad:  # float16 overflows beyond 65504 too
            raise RuntimeError(f"latent cache: {bad} of {latents.numel()} latents are not finite in float16 (NaN, or beyond "
                               f"65504 after normalisation): not saved to {path}; check the tokenizer's latents_mean/latents_std")
        if rt.main:
            torch.save({"format": cls.FORMAT, "latents": latents, **made_by}, path + ".tmp")
            os.replace(path + ".tmp", path)
        return cls(latents, spec["crop"], rt.device)

    @classmethod
    def load(cls, path: str, shape: tuple, made_by: dict, rt: Runtime) -> torch.Tensor:
        """The latents of ``path`` when they are what this run would build (see the class docstring)."""
        redo = f"delete {path} and run again to rebuild it"
        try:
            saved = torch.load(path, map_location="cpu")
        except Exception as err:
            raise RuntimeError(f"latent cache {path} cannot be read ({str(err).splitlines()[0]}): {redo}") from err
        meta = saved if isinstance(saved, dict) and saved.get("format") == cls.FORMAT else None
        latents = meta.get("latents") if meta else saved
        if not torch.is_tensor(latents):
            raise RuntimeError(f"latent cache {path} holds no latents (a {type(saved).__name__}): {redo}")
        problems = []
        if tuple(latents.shape) != tuple(shape):
            problems.append(f"its shape is {tuple(latents.shape)}, this config's latent_cache and tokenizer give {tuple(shape)}")
        else:
            bad = int((~torch.isfinite(latents)).sum())
            if bad:
                problems.append(f"{bad} of {latents.numel()} latents are not finite")
        if meta:
            if meta.get("spec") != made_by["spec"]:
                problems.append(f"made for latent_cache {meta.get('spec')}, this config has {made_by['spec']}")
            if meta.get("tokenizer_sha256") != made_by["tokenizer_sha256"]:
                problems.append("made by another tokenizer (its weights or config differ)")
            if meta.get("engine") != made_by["engine"]:
                problems.append(f"made with the tokenizer engine {meta.get('engine')!r}, this run uses {made_by['engine']!r} "
                                f"(GLVC_TOKENIZER_ENGINE={meta.get('engine')} reuses it)")
        if problems:
            raise RuntimeError(f"latent cache {path} does not fit this run: {'; '.join(problems)}: {redo}")
        if meta is None and rt.main:
            print(f"latent cache: {path} was made before caches recorded their tokenizer: reused as this tokenizer's "
                  f"({redo} if the tokenizer changed since)", flush=True)
        return latents

    def sample(self, batch: int) -> torch.Tensor:
        n, _, _, h, w = self.latents.shape
        out = []
        for i in torch.randint(n, (batch,)).tolist():
            top = random.randint(0, h - self.crop)
            left = random.randint(0, w - self.crop)
            z = self.latents[i, :, :, top : top + self.crop, left : left + self.crop]
            out.append(z.flip(-1) if random.random() < 0.5 else z)
        return torch.stack(out).to(self.device, torch.float32)


def module_digest(module) -> str:
    """sha256 of a diffusers-style module's config (keys without a leading ``_``) and every tensor of its state dict."""
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(getattr(module, "config", {})).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for key, value in sorted(module.state_dict().items()):
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build_codec(ccfg: dict, latent_channels: int):
    """The codec that the ``codec`` section of a config trains, before training: new, or loaded from
    ``init_from`` with ``config`` as overrides (fine-tuning). Trainable, on the CPU."""
    from .codec import LatentCodec

    if ccfg.get("init_from"):  # fine-tune an exported codec (new lambdas or a new tokenizer)
        stored = LatentCodec.load_config(os.path.join(ccfg["init_from"], LatentCodec.config_name))
        if stored["latent_channels"] != latent_channels:  # a tokenizer of another latent width
            return transplant_codec(ccfg["init_from"], {**ccfg["config"], "latent_channels": latent_channels})
        codec = LatentCodec.from_pretrained(ccfg["init_from"], config_overrides=ccfg["config"])
        codec.requires_grad_(True)
        return codec.train()
    return LatentCodec(latent_channels=latent_channels, **ccfg["config"])


def transplant_codec(folder: str, overrides: dict):
    """A new codec with the config of the exported one in ``folder`` and ``overrides`` (a new
    ``latent_channels``), every tensor of the same name and shape copied from it: the transforms,
    hyperprior, memory and rate anchors start trained, and only the layers that touch the latent (the
    analysis' first convolution, the synthesis' last) start new. Trainable, on the CPU."""
    from safetensors.torch import load_file

    from .codec import LatentCodec
    from .codec.model import WEIGHTS_NAME

    config = {k: v for k, v in LatentCodec.load_config(os.path.join(folder, LatentCodec.config_name)).items()
              if not k.startswith("_")}
    codec = LatentCodec(**{**config, **overrides})
    own = codec.state_dict()
    stored = load_file(os.path.join(folder, WEIGHTS_NAME))
    tables = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")  # compressai's, resized when loaded
    kept = {k: v for k, v in stored.items() if k in own and (own[k].shape == v.shape or k.endswith(tables))}
    codec.load_state_dict(kept, strict=False)
    new = sorted(k for k in own if k not in kept)
    print(f"codec: {len(kept)} tensors from {folder}; new: {', '.join(new)}", flush=True)
    return codec.requires_grad_(True).train()


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


def train_codec(cfg: dict, rt: Runtime, data, logger: Logger, vae, interrupts: Interrupts | None = None):
    """Stage 2 on the frozen tokenizer. Returns the trained codec, or None if paused."""
    from .codec import LatentCodec
    from .tokenizer import tokenizer_for

    ccfg = cfg["codec"]
    out = os.path.join(cfg["output_dir"], "model", "codec")
    ckpt_path = os.path.join(cfg["output_dir"], "codec.pt")
    if os.path.isfile(os.path.join(out, "config.json")):
        codec = load_export("codec", out, ckpt_path, lambda: LatentCodec.from_pretrained(out), codec_export_problems)
        if rt.main:
            print(f"codec: already trained and exported to {out}: skipped (remove that folder to train it again)", flush=True)
        return codec
    torch.manual_seed(cfg["seed"] + 1)
    tok = tokenizer_for(vae, device=rt.device)
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
    if not run_stage("codec", ccfg, cfg, rt, logger, ckpt_path, modules, step_fn, data, interrupts):
        return None
    codec.eval()
    if rt.main:
        save_export(codec.cpu(), out)  # its weights are finite: run_stage checked them at the last checkpoint
    rt.barrier()
    return codec


RESUMABLE = ("tokenizer.pt", "codec.pt", "latents.pt", os.path.join("model", "tokenizer"), os.path.join("model", "codec"))
"""What in a run folder is worth a rerun: checkpoints, the latent cache, exported stages."""


def train(cfg: dict) -> str | None:
    """Run both stages; returns the exported model folder, or None when a stage stopped early (max_minutes).

    SIGINT/SIGTERM stop it with a checkpoint and raise :class:`TrainingInterrupted` (see the module
    docstring). When it fails, a run folder that this call created and that holds nothing of
    :data:`RESUMABLE` is removed."""
    rt = Runtime()
    random.seed(cfg["seed"] + rt.rank)
    created = not os.path.exists(cfg["output_dir"])
    with Interrupts() as interrupts:
        try:
            return _train(cfg, rt, interrupts)
        except BaseException as err:
            if rt.main:
                _after_failure(cfg["output_dir"], created, err)
            raise


def _train(cfg: dict, rt: Runtime, interrupts: Interrupts) -> str | None:
    from .data.dataset import TrainSet

    if rt.main:
        print(f"data: loading {cfg['data']['root']}", flush=True)
    # before the run folder is made: a missing training set fails with nothing written
    data = TrainSet(cfg["data"]["root"], device=rt.device, seed=cfg["seed"] + rt.rank,
                    **{k: v for k, v in cfg["data"].items() if k != "root"})
    if rt.main:
        print(f"data: {data!r}", flush=True)
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
        with open(config_path + ".tmp", "w") as f:
            json.dump(cfg, f, indent=2)
        os.replace(config_path + ".tmp", config_path)
    logger = Logger(cfg["output_dir"], rt.main)
    vae = train_tokenizer(cfg, rt, data, logger, interrupts)
    if vae is None:
        return None
    vae = vae.to(rt.device).eval().requires_grad_(False)
    codec = train_codec(cfg, rt, data, logger, vae, interrupts)
    if codec is None:
        return None
    folder = os.path.join(cfg["output_dir"], "model")
    if rt.main:
        export_model_files(cfg, folder, rt.device)
    rt.barrier()
    return folder


def _after_failure(run_dir: str, created: bool, err: BaseException) -> None:
    """After a failed or stopped run: remove the run folder if this run made it and it holds nothing to
    resume; otherwise say, for a signal, what the next run resumes from."""
    kept = [name for name in RESUMABLE if os.path.exists(os.path.join(run_dir, name))]
    if created and not kept and os.path.isdir(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        print(f"removed {run_dir}: this run made it and it held nothing to resume (no checkpoint, cache or export)",
              flush=True)
    elif isinstance(err, TrainingInterrupted) and not err.reported:
        what = f"what it holds ({', '.join(kept)})" if kept else "nothing to resume"
        print(f"stopped by {signal.Signals(err.signum).name}{' (a second Ctrl-C: no checkpoint)' if err.forced else ''}; "
              f"{run_dir} keeps {what}: run the same command to go on", flush=True)


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (``max_minutes``, ``output_dir``,
    ``progress_seconds``, ``description`` and ``_``-prefixed comments left out: they say how and where
    this run goes, or describe it, not what it trains)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if not prefix and (key in ("max_minutes", "output_dir", "progress_seconds", "description") or key.startswith("_")):
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
