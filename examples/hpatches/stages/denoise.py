"""Stage 1: a U-Net trained with L1 on (noisy, clean) training pairs, then applied to every patch."""

from __future__ import annotations

import numpy as np
import torch

from tripletkit.training import LossBuffer, atomic_open, atomic_save, atomic_write_text, init_optimizer_state
from tripletkit_hpatches.config import Config
from tripletkit_hpatches.data import PatchDataset
from tripletkit_hpatches.models import build_denoiser
from tripletkit_hpatches.runtime import Runtime

__all__ = ["run_denoise", "apply_denoiser", "save_npz", "denoise_done"]


def denoise_done(out) -> bool:
    """Whether ``denoised.npz`` (written last, atomically) is there and loads without unpickling; a damaged file
    is redone (the stage is seeded, so it comes out the same)."""
    import warnings

    path = out / "denoised.npz"
    if not path.exists():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            for key in z.files:
                z[key]
    except Exception as e:  # any unreadable file is redone, with a warning
        warnings.warn(f"{path} does not load ({e}); running the denoise stage again", stacklevel=2)
        return False
    return True


APPLY_CHUNK = 2048


def save_npz(path, arrays: dict[str, np.ndarray]) -> None:
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def run_denoise(cfg: Config, ds: PatchDataset, split: dict[str, list[str]], rt: Runtime) -> None:
    """``denoiser.pt``, ``denoise_log.csv`` and ``denoised.npz`` (every sequence, all 16 images) in ``cfg.out``."""
    from tqdm import tqdm

    device = rt.device
    out = cfg.out / "denoised.npz"
    rt.manual_seed(cfg.seed)  # before the model: its initialisation draws from torch's RNG (the same on every rank)
    model = build_denoiser(cfg.denoiser)
    if model is None:
        if rt.main:
            save_npz(out, ds.noisy)
        return
    model = model.to(device).to(memory_format=torch.channels_last)
    net = rt.compiled(rt.wrap(model))
    x_np, _, clean_np = ds.training_arrays(split["train"], noisy=True)
    x, clean = torch.from_numpy(np.ascontiguousarray(x_np)), torch.from_numpy(np.ascontiguousarray(clean_np))
    if device.type == "cuda":  # the training patches stay on the GPU: no host-to-device copy per step
        x, clean = x.to(device), clean.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.denoise_lr)
    init_optimizer_state(opt)
    rt.end_step()  # on XLA the model's zero scalars become device data here: step 1 is then the same graph as the rest
    rng = np.random.default_rng(cfg.seed + rt.rank)  # each replica draws its own batches
    rows = ["step,l1,identity_l1"]
    # both L1s stay on the device and are read every judge_every steps with one transfer each
    l1s, identity = LossBuffer(cfg.judge_every), LossBuffer(cfg.judge_every)
    for step in tqdm(range(1, cfg.denoise_steps + 1), desc="denoise", disable=cfg.quiet):
        idx = torch.from_numpy(rng.integers(0, len(x), cfg.denoise_batch)).to(x.device)
        xb = x[idx].float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
        cb = clean[idx].float()[:, None].to(device)
        with rt.autocast():
            pred = net(xb)
        loss = (pred.float() - cb).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        l1s.append(loss)
        identity.append((xb - cb).abs().mean())
        rt.end_step()
        if len(l1s) == cfg.judge_every or step == cfg.denoise_steps:
            first = step - len(l1s) + 1
            rows += [f"{first + i},{a:.4f},{b:.4f}" for i, (a, b) in enumerate(zip(l1s.read(), identity.read()))]
    if not rt.main:
        return
    atomic_write_text(cfg.out / "denoise_log.csv", "\n".join(rows) + "\n")
    atomic_save(model.state_dict(), cfg.out / "denoiser.pt")
    save_npz(out, apply_denoiser(model, ds, rt, progress=not cfg.quiet))


def apply_denoiser(
    model: torch.nn.Module, ds: PatchDataset, rt: Runtime, progress: bool = True
) -> dict[str, np.ndarray]:
    """Every noisy patch through the denoiser in eval mode, rounded to uint8.

    Applied in the run's precision: bf16 moves a denoised pixel by at most one grey level after rounding (mean 0.1
    on real patches with the deep U-Net) and is 3-4× faster on CPUs with AMX. Chunks have one static size (the
    last is padded), so an XLA device compiles one graph.
    """
    from tqdm import tqdm

    model.eval()
    denoised = {}
    with torch.no_grad():
        for s in tqdm(ds.sequences, desc="applying the denoiser", disable=not progress):
            arr = ds.noisy[s].reshape(-1, ds.size, ds.size)
            outs = []
            for b in range(0, len(arr), APPLY_CHUNK):
                chunk = arr[b : b + APPLY_CHUNK]
                n = len(chunk)
                if rt.xla and n < APPLY_CHUNK:
                    chunk = np.concatenate([chunk, np.zeros((APPLY_CHUNK - n, ds.size, ds.size), chunk.dtype)])
                xb = (
                    torch.from_numpy(chunk).float()[:, None].to(rt.device).contiguous(memory_format=torch.channels_last)
                )
                with rt.autocast():
                    y = model(xb)
                outs.append(y.float().clamp(0, 255).round().byte().cpu().numpy()[:n, 0])
            denoised[s] = np.concatenate(outs).reshape(ds.noisy[s].shape)
    return denoised
