"""The HPatches pipeline: denoise → descriptor → evaluate, with tripletkit's miners, margins, sampler and scheduler.

    python examples/hpatches/train.py                                   # embedded default data, all stages
    python examples/hpatches/train.py --data DIR --experiment bh1024    # a preset of the study's table
    python examples/hpatches/train.py --out runs/x --resume             # continue an interrupted run exactly

Stages (``--stages denoise,descriptor,evaluate``) read the previous stage's output from the run folder:

* ``denoise``: a U-Net (``--denoiser shallow|deep|none``) trained with L1 on (noisy, clean) pairs of the training
  sequences, then applied to every patch (``denoised.npz``). Data without noise (an ``hpatches-release`` folder) is
  noised first with our documented noise model.
* ``descriptor``: L2-Net trained on the denoised training patches with S×K batches (``SymmetricSampler``), a miner
  (``random``, ``batch_hard``, ``batch_all``), a margin function and, optionally, the stepped-batch scheduler; atomic
  checkpoints every ``--checkpoint-every`` steps and ``--resume`` continue exactly (model, optimiser, scheduler stage,
  sampler position, RNG).
* ``evaluate``: descriptors of the denoised test sequences, the three HPatches tasks on task files generated for the
  dataset (the benchmark's verification generator; retrieval queries and distractors drawn the benchmark's way),
  next to SIFT and normalised raw pixels on the same patches; ``results.md``, ``results.json``, figures.

The run folder also holds ``config.json`` (the resolved configuration), ``log.csv`` / ``denoise_log.csv`` and
``curves.png``. Numbers on the embedded default are on SYNTHETIC data and say so. ``--experiment all`` runs every
preset into ``OUT/<preset>`` (a denoiser is trained once per denoiser type and shared) and writes ``OUT/experiments.md``.

Devices and precision: ``--device auto`` takes CUDA when present, else the CPU. ``--precision auto`` trains with
bf16 autocast on CUDA, XLA, and CPUs whose oneDNN has native bf16 (AMX / AVX512-BF16); fp32 elsewhere; losses and
evaluation are always fp32. ``--compile`` wraps the training forward in ``torch.compile``. On CUDA the training
patches live on the GPU. On XLA (torch-xla) each step ends with ``torch_xla.sync()``; batch shapes are static, so
the graph compiles once per scheduler stage.

Several processes: ``torchrun --nproc_per_node=W examples/hpatches/train.py ...`` trains with DDP (gloo on CPU, nccl
on CUDA, the ``xla`` backend with ``--device xla``). ``--stages-sk`` is per replica: each replica draws its own S×K
batch from a sharded sampler, the loss mines over the gathered W·S·K batch (``gather_distributed``) and the
stepped-batch scheduler judges the replicas' mean loss, so all of them change stage together. Rank 0 prepares the
data, writes logs and checkpoints (with every rank's RNG state, so ``--resume`` under the same W is exact) and
evaluates.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hpatches.checkpoint import atomic_save, rng_state, set_rng_state  # noqa: E402
from hpatches.baselines import describe, model_descriptors, raw_pixel_descriptors, sift_descriptors  # noqa: E402
from hpatches.data import PatchDataset, load_dataset  # noqa: E402
from hpatches.descriptors import IMAGE_TYPES  # noqa: E402
from hpatches.evaluate import evaluate, evaluate_matching, results_figure  # noqa: E402
from hpatches.models import L2Net, build_denoiser  # noqa: E402
from hpatches.noise import noise_sequence  # noqa: E402
from hpatches.tasks import generate_verification, write_verification  # noqa: E402
from tripletkit import LOSSES, CollapseMonitor, OfflineMiner, SteppedBatchScheduler, SymmetricSampler  # noqa: E402
from tripletkit.distributed import all_reduce_mean  # noqa: E402

STAGES = ("denoise", "descriptor", "evaluate")

# The study's table (../shared/seed): the baseline is random triplets, hinge margin 1, "default SGD" (Keras: no
# momentum) at 0.1; batch hard uses Adam 2e-4, stepping the batch 64 → 128 (bh128) or 64 → 128 → 384 → 1024 with
# K 2 → 8 (bh1024), "starting with weights from the baseline model": under --experiment all the batch-hard presets
# start from the baseline run's descriptor (INIT_FROM); run alone, pass --init-descriptor.
PRESETS: dict[str, dict] = {
    "baseline": dict(denoiser="shallow", miner="random", margin_fn="hinge", margin=1.0, optimizer="sgd", lr=0.1, momentum=0.0, stages_sk="25x2", scheduler="none"),
    "soft-baseline": dict(denoiser="deep", miner="random", margin_fn="softplus", margin=0.0, optimizer="sgd", lr=0.1, momentum=0.0, stages_sk="25x2", scheduler="none"),
    "bh128": dict(denoiser="deep", miner="batch_hard", margin_fn="hinge", margin=1.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4", scheduler="stepped_batch"),
    "bh1024": dict(denoiser="deep", miner="batch_hard", margin_fn="hinge", margin=1.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4,64x6,128x8", scheduler="stepped_batch"),
    "soft-bh1024": dict(denoiser="deep", miner="batch_hard", margin_fn="softplus", margin=0.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4,64x6,128x8", scheduler="stepped_batch"),
}
INIT_FROM = {"bh128": "baseline", "bh1024": "baseline", "soft-bh1024": "baseline"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HPatches pipeline: denoise, descriptor, evaluate.")
    p.add_argument("--data", type=Path, help="hpatches-release or N-HPatches folder (default: the embedded default)")
    p.add_argument("--sequences", type=Path, help="image sequences with homographies: extract an hpatches-release dataset first")
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--experiment", choices=sorted(PRESETS) + ["all"], help="a preset of the study's table (flags given explicitly win); all: every preset and one table")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "xla"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="autocast dtype of the training forward passes")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--xla-launch", action="store_true", help="with --device xla: one process per local XLA device (torch_xla.launch), e.g. on each TPU VM host of a pod")
    p.add_argument("--quiet", action="store_true")
    # denoiser
    p.add_argument("--denoiser", default=None, choices=["shallow", "deep", "none"])
    p.add_argument("--denoise-steps", type=int, default=300)
    p.add_argument("--denoise-epochs", type=float, default=None, help="instead of --denoise-steps: passes over the training pairs")
    p.add_argument("--denoise-batch", type=int, default=256)
    p.add_argument("--denoise-lr", type=float, default=1e-3)
    # descriptor
    p.add_argument("--miner", default=None, choices=["random", "batch_hard", "batch_all", "offline"])
    p.add_argument("--offline-every", type=int, default=200, help="offline miner: re-mine the training bank every N steps")
    p.add_argument("--margin-fn", default=None, choices=["hinge", "softplus"])
    p.add_argument("--margin", type=float, default=None)
    p.add_argument("--distance", default="euclidean", choices=["euclidean", "sqeuclidean", "cosine"])
    p.add_argument("--optimizer", default=None, choices=["adam", "sgd"])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9; the study's baselines: 0)")
    p.add_argument("--init-descriptor", type=Path, default=None, help="start the descriptor from these L2-Net weights (a descriptor.pt)")
    p.add_argument("--stages-sk", default=None, help="S×K per stage, e.g. 32x2,32x4 (one entry: a fixed S×K)")
    p.add_argument("--scheduler", default=None, choices=["none", "stepped_batch"])
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--steps", type=int, default=300, help="descriptor training steps")
    p.add_argument("--epochs", type=float, default=None, help="instead of --steps: train until epochs × (training patches) patches have been used (batches grow with the stages)")
    p.add_argument("--eval-every", type=int, default=250, help="matching mAP on a fixed subset of the test sequences every N steps, for the learning curve (0: off)")
    p.add_argument("--augment", default="none", choices=["none", "random", "pair"])
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--monitor-every", type=int, default=50, help="collapse check on a fixed probe batch (eval mode)")
    # evaluation
    p.add_argument("--verification-pairs", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=1000)
    return p


DEFAULTS = dict(denoiser="shallow", miner="batch_hard", margin_fn="hinge", margin=None, optimizer="adam", lr=2e-4, momentum=0.9, stages_sk="16x2,16x4,32x4", scheduler="stepped_batch")


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    defaults = DEFAULTS
    preset = PRESETS.get(a.experiment, {}) if a.experiment else {}
    for key, value in defaults.items():
        if getattr(a, key) is None:
            setattr(a, key, preset.get(key, value))
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"error: unknown stage(s) {', '.join(bad)}; valid: {', '.join(STAGES)}")
    a.stage_list = stages
    try:
        a.sk = [(int(s), int(k)) for s, k in (part.split("x") for part in a.stages_sk.split(","))]
    except ValueError:
        raise SystemExit(f"error: --stages-sk must look like 32x2,32x4, got {a.stages_sk!r}") from None
    return a


@dataclass
class Runtime:
    """Where and how the run executes: device, autocast dtype, compile, and the process group (rank, world)."""

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def barrier(self) -> None:
        if self.ddp:
            import torch.distributed as dist

            dist.barrier()

    def end_step(self) -> None:
        """The step boundary: on XLA this cuts and runs the traced graph."""
        if self.device.type == "xla":
            import torch_xla

            torch_xla.sync()

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training loop calls: DDP across replicas, then ``torch.compile`` if asked."""
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.compile else model


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SystemExit("error: --precision bf16 but this GPU does not support bfloat16")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "xla":
        return "bf16"
    # oneDNN runs bf16 convolutions natively only with AMX or AVX512-BF16; elsewhere bf16 is emulated and slower
    native = torch.backends.mkldnn.is_available() and getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    return "bf16" if native else "fp32"


def setup_runtime(a: argparse.Namespace) -> Runtime:
    """One process, or one replica of a ``torchrun`` job (WORLD_SIZE > 1 in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        device = pick_device(a.device)
        return Runtime(device, pick_precision(a.precision, device), a.compile)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(hours=3)  # rank 0 alone prepares data and evaluates while the others wait
    if a.device == "xla":
        device = pick_device("xla")
        import torch_xla.distributed.xla_backend  # noqa: F401  registers the "xla" process-group backend

        dist.init_process_group("xla", init_method="xla://", timeout=timeout)
    elif a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available()):
        if torch.cuda.device_count() <= local:
            raise SystemExit(f"error: local rank {local} needs CUDA device {local}, but {torch.cuda.device_count()} are available")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        dist.init_process_group("nccl", timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return Runtime(device, pick_precision(a.precision, device), a.compile, dist.get_rank(), dist.get_world_size())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if name == "xla":
        try:
            import torch_xla  # noqa: F401
        except ImportError:
            raise SystemExit("error: --device xla needs torch-xla (pip install '.[tpu]', which requires torch 2.9)") from None
        return torch_xla.device()
    return torch.device(name)


# ------------------------------------------------------------------------------------------------ data
def extract_sequences(a) -> None:
    """``--sequences``: extract an hpatches-release dataset into ``OUT/extracted`` once, then use it as ``--data``."""
    from hpatches.extract import load_sequence
    from hpatches.prepare import _sequence_folders, extract_many

    target = a.out / "extracted"
    if not (target / "dataset.json").exists():
        extract_many([load_sequence(f) for f in _sequence_folders(a.sequences)], target, 2000, a.seed, synthetic=False, progress=not a.quiet)
    a.data, a.sequences = target, None


def load_data(a) -> tuple[PatchDataset, dict]:
    if a.sequences is not None:
        extract_sequences(a)
    if a.data is None:
        from hpatches.prepare import build_default

        a.data = build_default(progress=not a.quiet) / "nhpatches"
    ds = load_dataset(a.data, progress=not a.quiet)
    if not ds.noisy:  # clean release: noise it with our model so the denoiser has something to learn
        ds.noisy = {s: np.stack([noise_sequence(ds.patches(s), s, seed=a.seed)[t] for t in IMAGE_TYPES]) for s in ds.sequences}
    split_file = Path(a.data) / "splits.json"
    if split_file.exists():
        splits = json.loads(split_file.read_text())
        split = splits.get("default") or splits.get("a")
    else:
        from hpatches.data import make_splits

        split = make_splits(ds.sequences, seed=a.seed)["default"]
    split = {"train": [s for s in split["train"] if s in ds.clean], "test": [s for s in split["test"] if s in ds.clean]}
    if not split["train"] or not split["test"]:
        raise SystemExit(f"error: {a.data}: the split needs training and test sequences, got {split}")
    return ds, split


# ------------------------------------------------------------------------------------------------ stages
def stage_denoise(a, ds: PatchDataset, split: dict, rt: Runtime) -> None:
    device = rt.device
    out = a.out / "denoised.npz"
    torch.manual_seed(a.seed)  # before the model: its initialisation draws from torch's RNG (the same on every rank)
    model = build_denoiser(a.denoiser)
    if model is None:
        if rt.main:
            np.savez(out, **ds.noisy)
        return
    from tqdm import tqdm

    model = model.to(device).to(memory_format=torch.channels_last)
    net = rt.wrap(model)
    x, _, clean = ds.training_arrays(split["train"], noisy=True)
    x, clean = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(clean))
    if device.type == "cuda":  # the training patches stay on the GPU: no host-to-device copy per step
        x, clean = x.to(device), clean.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=a.denoise_lr)
    rng = np.random.default_rng(a.seed + rt.rank)  # each replica draws its own batches
    if a.denoise_epochs is not None:  # one epoch: as many pairs as the training set has, over all replicas
        a.denoise_steps = max(1, int(np.ceil(a.denoise_epochs * len(x) / (a.denoise_batch * rt.world))))
    log = a.out / "denoise_log.csv"
    with contextlib.ExitStack() as stack:
        w = None
        if rt.main:
            w = csv.writer(stack.enter_context(log.open("w", newline="")))
            w.writerow(["step", "l1", "identity_l1"])
        for step in tqdm(range(1, a.denoise_steps + 1), desc="denoise", disable=a.quiet):
            idx = torch.from_numpy(rng.integers(0, len(x), a.denoise_batch)).to(x.device)
            xb = x[idx].float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
            cb = clean[idx].float()[:, None].to(device)
            with rt.autocast():
                pred = net(xb)
            loss = (pred.float() - cb).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rt.end_step()
            if w is not None:
                w.writerow([step, f"{loss.item():.4f}", f"{(xb - cb).abs().mean().item():.4f}"])
    if not rt.main:
        return
    torch.save(model.state_dict(), a.out / "denoiser.pt")
    model.eval()
    denoised = {}
    # applied in the run's precision: bf16 moves a denoised pixel by at most one grey level after rounding (mean 0.1
    # on real patches with the deep U-Net) and is 3-4× faster on CPUs with AMX
    with torch.no_grad():
        for s in tqdm(ds.sequences, desc="applying the denoiser", disable=a.quiet):
            arr = ds.noisy[s].reshape(-1, ds.size, ds.size)
            outs = []
            for b in range(0, len(arr), 2048):
                xb = torch.from_numpy(arr[b : b + 2048]).float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
                with rt.autocast():
                    y = model(xb)
                outs.append(y.float().clamp(0, 255).round().byte().cpu().numpy()[:, 0])
            denoised[s] = np.concatenate(outs).reshape(ds.noisy[s].shape)
    np.savez(out, **denoised)


def _augment(x: torch.Tensor, labels: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """``random``: an independent flip/rot90 per patch; ``pair``: one flip/rot90 per class, applied to all its
    members (anchor and positive alike: the study's untested idea)."""
    if mode == "none":
        return x
    n = x.shape[0]
    if mode == "random":
        choice = torch.randint(0, 8, (n,), generator=gen)
    else:
        per_class = torch.randint(0, 8, (int(labels.max()) + 1,), generator=gen)
        choice = per_class[labels]
    out = x.clone()
    for c in range(8):
        sel = choice == c
        if sel.any():
            y = torch.rot90(x[sel], c % 4, (2, 3))
            out[sel] = torch.flip(y, (3,)) if c >= 4 else y
    return out


def _all_ranks(obj, rt: Runtime) -> list:
    """``obj`` from every replica, in rank order (the object itself in a list for one process)."""
    if not rt.ddp or rt.device.type == "xla":  # the xla backend has no object collectives: rank 0's state only
        return [obj]
    import torch.distributed as dist

    out = [None] * rt.world
    dist.all_gather_object(out, obj)
    return out


def stage_descriptor(a, ds: PatchDataset, split: dict, rt: Runtime) -> None:
    from tqdm import tqdm

    device = rt.device
    den = np.load(a.out / "denoised.npz")
    patches = np.concatenate([den[s].reshape(-1, ds.size, ds.size) for s in split["train"]])
    labels = np.concatenate([np.tile(np.arange(ds.num_patches(s)), 16) + off for s, off in zip(split["train"], np.cumsum([0] + [ds.num_patches(s) for s in split["train"]][:-1]))])
    x_all = torch.from_numpy(patches).float()[:, None]
    y_all = torch.from_numpy(labels.astype(np.int64))
    on_device = device.type == "cuda" and a.augment == "none"  # the training patches stay on the GPU
    if on_device:
        x_all, y_all = x_all.to(device), y_all.to(device)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    model = L2Net()
    if a.init_descriptor is not None:
        try:
            model.load_state_dict(torch.load(a.init_descriptor, weights_only=True, map_location="cpu"))
        except (OSError, RuntimeError) as e:
            raise SystemExit(f"error: --init-descriptor {a.init_descriptor}: {e}") from None
    model = model.to(device).to(memory_format=torch.channels_last)
    net = rt.wrap(model)  # DDP broadcasts rank 0's initial weights
    if rt.ddp:  # different dropout masks on each replica from here on
        torch.manual_seed(a.seed + rt.rank)
    # offline: triplets mined from the descriptors of the whole training bank (hardest negative, random positive),
    # re-mined every --offline-every steps; each step trains on S·K // 3 of them. They are local to each replica, so
    # the offline loss is not gathered (DDP's gradient average is the mean over all replicas' triplets).
    static = rt.compile or device.type == "xla"  # fixed shapes: no host sync for the class size, no NaN check
    max_k = max(k for _, k in a.sk)
    miner = {"random": {"name": "random", "seed": a.seed}, "batch_hard": {"name": "batch_hard", "max_class_size": max_k if static else None},
             "batch_all": "batch_all", "offline": "random"}[a.miner]
    loss_fn = LOSSES.build("triplet", margin=a.margin, margin_fn=a.margin_fn, distance=a.distance, miner=miner,
                           validate=not static, gather_distributed=rt.ddp and a.miner != "offline")
    offline = OfflineMiner(distance=a.distance, positive="random", negative="hardest", seed=a.seed) if a.miner == "offline" else None
    mined: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    opt = torch.optim.Adam(model.parameters(), lr=a.lr) if a.optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=a.lr, momentum=a.momentum)
    sched = (SteppedBatchScheduler(a.sk, margin_fn=loss_fn, patience=a.patience, guard=True, guard_patience=4 * a.patience, sync_distributed=rt.ddp)
             if a.scheduler == "stepped_batch" else None)
    S, K = (sched.S, sched.K) if sched else a.sk[0]
    sampler = SymmetricSampler(labels, S, K, seed=a.seed, rank=rt.rank, world_size=rt.world)
    gen = torch.Generator().manual_seed(a.seed + rt.rank)
    ckpt = a.out / "checkpoint.pt"
    step = seen = 0
    if a.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location="cpu")
        seen = state.get("seen", 0)
        if state.get("world", 1) != rt.world:
            raise SystemExit(f"error: {ckpt} was written by {state.get('world', 1)} process(es); resume it with as many (this run has {rt.world})")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched:
            sched.load_state_dict(state["scheduler"])
        mine = state["ranks"][rt.rank] if rt.rank < len(state["ranks"]) else state["ranks"][0]
        # each replica's own position: a sharded sampler has generated up to its own next batch
        sampler.load_state_dict(mine.get("sampler", state["sampler"]))
        gen.set_state(mine["augment_rng"])
        set_rng_state(mine["rng"], device)
        step = state["step"]
        mined = state.get("mined")
        if offline is not None and state.get("offline_rng") is not None:
            offline.load_state_dict(state["offline_rng"])
        if state.get("miner_rng") is not None:
            loss_fn.miner.load_state_dict(state["miner_rng"])
    log, map_log = a.out / "log.csv", a.out / "map_log.csv"
    if rt.main:
        for path, header in ((log, "step,loss,stage,batch"), (map_log, "step,matching_map")):
            if step == 0 or not path.exists():
                path.write_text(header + "\n")
            else:
                keep = [r for r in path.read_text().splitlines()[1:] if int(r.split(",")[0]) <= step]
                path.write_text(header + "\n" + "".join(r + "\n" for r in keep))
    # --epochs is a patch budget: with stepped batches the number of steps is only known at the end
    budget = None if a.epochs is None else int(a.epochs * len(labels))
    curve = _curve_patches(ds, split["test"], den) if rt.main and a.eval_every > 0 and device.type != "xla" else None
    monitor = CollapseMonitor(loss_fn, action="warn")
    probe_k = 2 if np.bincount(labels).min() < 4 else 4
    probe = torch.tensor(next(iter(SymmetricSampler(labels, min(64, len(np.unique(labels))), probe_k, seed=a.seed + 1))))
    net.train()
    batches = iter(sampler)
    bar = tqdm(total=budget if budget is not None else a.steps, initial=seen if budget is not None else step, desc="descriptor", unit="patch" if budget else "it", disable=a.quiet)
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(log.open("a")) if rt.main else None
        while (step < a.steps) if budget is None else (seen < budget):
            if offline is not None:
                if mined is None or step % a.offline_every == 0:
                    mined = _mine_bank(model, x_all, y_all, offline, device)
                b = max(1, sampler.batch_size // 3)
                pick = torch.randint(0, len(mined[0]), (b,), generator=gen)
                idx = torch.cat([mined[0][pick], mined[1][pick], mined[2][pick]]).to(x_all.device)
                xb = x_all[idx].to(device).contiguous(memory_format=torch.channels_last)
                r = torch.arange(b, device=device)
                with rt.autocast():
                    emb = net(xb)
                loss = loss_fn(emb.float(), triplets=(r, r + b, r + 2 * b))
            else:
                try:
                    idx = torch.tensor(next(batches))
                except StopIteration:
                    batches = iter(sampler)
                    continue
                idx = idx.to(x_all.device)
                yb = y_all[idx]
                xb = _augment(x_all[idx], yb - yb.min(), a.augment, gen).to(device).contiguous(memory_format=torch.channels_last)
                with rt.autocast():
                    emb = net(xb)
                loss = loss_fn(emb.float(), yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            rt.end_step()
            step += 1
            used = xb.shape[0] * rt.world
            seen += used
            value = float(loss.detach())
            if sched and sched.step(value):  # under DDP the scheduler judges the replicas' mean loss
                sampler.set_batch_shape(sched.S, sched.K)
            if rt.ddp and not sched and not loss_fn.gather_distributed:  # a gathered loss is already the global one
                value = all_reduce_mean(value)
            if f is not None:
                f.write(f"{step},{value:.6f},{sched.stage if sched else 0},{sampler.batch_size * rt.world}\n")
            if step % a.monitor_every == 0 and rt.main:
                # the descriptors as they will be used (eval mode); a CollapseWarning says when they collapse
                model.eval()
                with torch.no_grad():
                    stats = monitor.update(model(x_all[probe.to(x_all.device)].to(device)).cpu(), y_all[probe.to(y_all.device)].cpu(), value)
                model.train()
                bar.set_postfix(loss=f"{value:.3f}", batch=sampler.batch_size * rt.world, spread=f"{stats.mean_distance:.3f}")
            else:
                bar.set_postfix(loss=f"{value:.3f}", batch=sampler.batch_size * rt.world)
            bar.update(used if budget is not None else 1)
            finished = (step == a.steps) if budget is None else (seen >= budget)
            if curve is not None and (step % a.eval_every == 0 or finished):
                score = evaluate_matching(describe(curve, model_descriptors(model, device=device)), curve)["mean"]
                model.train()
                with map_log.open("a") as m:
                    m.write(f"{step},{score:.6f}\n")
            if step % a.checkpoint_every == 0 or finished:
                ranks = _all_ranks({"rng": rng_state(device), "augment_rng": gen.get_state(), "sampler": sampler.state_dict()}, rt)
                if rt.main:
                    f.flush()
                    atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                                 "sampler": sampler.state_dict(), "ranks": ranks, "step": step, "seen": seen, "train_patches": len(labels), "world": rt.world,
                                 "mined": mined, "offline_rng": offline.state_dict() if offline is not None else None,
                                 "miner_rng": loss_fn.miner.state_dict() if hasattr(loss_fn.miner, "state_dict") else None}, ckpt)
                batches = iter(sampler)
    bar.close()
    if rt.main:
        torch.save(model.state_dict(), a.out / "descriptor.pt")


def _curve_patches(ds: PatchDataset, test: list[str], den, sequences: int = 3, patches: int = 500) -> dict:
    """The learning curve's fixed evaluation set: the first ``patches`` patches of the first ``sequences`` test
    sequences (all 16 images). It only draws the curve; nothing is selected on it."""
    return {s: {t: den[s][k][:patches] for k, t in enumerate(IMAGE_TYPES)} for s in test[:sequences]}


def _mine_bank(model: torch.nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, miner, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Describe every training patch (eval mode) and mine one triplet per valid anchor from the whole bank."""
    model.eval()
    with torch.no_grad():
        bank = torch.cat([model(x_all[b : b + 2048].to(device)).cpu() for b in range(0, len(x_all), 2048)])
    model.train()
    t = miner(bank, y_all.cpu())
    keep = torch.nonzero(t.valid).flatten()
    return t.anchor[keep], t.positive[keep], t.negative[keep]


def _retrieval_files(ds: PatchDataset, den, test: list[str], tasks: Path, n_queries: int, seed: int) -> None:
    """Queries and distractors the benchmark's way: random (sequence, patch) ref cells with pixel std > 10, no
    duplicates, queries first, then distractors disjoint from them."""
    import pandas as pd

    rng = np.random.RandomState(seed)
    cells = [(s, i) for s in test for i in range(ds.num_patches(s)) if den[s][0, i].std() > 10]
    order = rng.permutation(len(cells))
    nq = min(n_queries, len(cells) // 3)
    q = [cells[k] for k in order[:nq]]
    d = [cells[k] for k in order[nq:]]
    pd.DataFrame(q, columns=["s", "idx"]).to_csv(tasks / "retr_queries_split-default.csv", index=False)
    pd.DataFrame(d, columns=["s", "idx"]).to_csv(tasks / "retr_distractors_split-default.csv", index=False)


def stage_evaluate(a, ds: PatchDataset, split: dict, device) -> dict:
    den = np.load(a.out / "denoised.npz")
    test = split["test"]
    tasks = a.out / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "splits.json").write_text(json.dumps({"default": {"name": "default", "test": test, "train": split["train"]}}))
    counts = {s: ds.num_patches(s) for s in test}
    if not (tasks / "verif_pos_split-default.csv").exists():
        write_verification(generate_verification(test, counts, n_pairs=a.verification_pairs, progress=not a.quiet), tasks, "default")
        _retrieval_files(ds, den, test, tasks, a.queries, a.seed)
    patches = {s: {t: den[s][k] for k, t in enumerate(IMAGE_TYPES)} for s in test}
    model = L2Net().to(device)
    model.load_state_dict(torch.load(a.out / "descriptor.pt", weights_only=True))
    methods = {"ours (L2-Net)": model_descriptors(model, device=device), "SIFT": sift_descriptors, "raw pixels": raw_pixel_descriptors}
    table, results = [], {}
    for name, fn in methods.items():
        r = evaluate(describe(patches, fn), tasks, "default", progress=not a.quiet)
        results[name] = {k: r[k] for k in ("verification", "matching", "retrieval", "ties")}
        table.append([name, r["verification"], r["matching"], r["retrieval"]])
        if name.startswith("ours"):
            results_figure(r, a.out / "results.png", title=f"{name} on {'SYNTHETIC ' if ds.synthetic else ''}data ({len(test)} test sequences)")
    tsne_figure(a, ds, den, test, model, device)
    from tabulate import tabulate

    md = [f"# Results ({'SYNTHETIC embedded default' if ds.synthetic else a.data}; {len(test)} test sequences; ties: reference)", "",
          tabulate(table, headers=["descriptor", "verification", "matching", "retrieval"], tablefmt="github", floatfmt=".4f"), ""]
    (a.out / "results.md").write_text("\n".join(md))
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    if not a.quiet:
        print("\n".join(md))
    return results


def tsne_figure(a, ds: PatchDataset, den, test: list[str], model: torch.nn.Module, device) -> None:
    """t-SNE of the descriptors of one S×K batch of test patches (S = 16 classes × K = 8 images), as in the study:
    separated clusters for a healthy descriptor, one blob for a collapsed one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    patches = np.concatenate([den[s].reshape(-1, ds.size, ds.size) for s in test])
    offsets = np.cumsum([0] + [ds.num_patches(s) for s in test][:-1])
    labels = np.concatenate([np.tile(np.arange(ds.num_patches(s)), 16) + o for s, o in zip(test, offsets)])
    k = 8 if np.bincount(labels).min() >= 8 else 2
    batch = next(iter(SymmetricSampler(labels, min(16, len(np.unique(labels))), k, seed=a.seed)))
    model.eval()
    with torch.no_grad():
        emb = model(torch.from_numpy(patches[batch]).float()[:, None].to(device)).cpu().numpy()
    xy = TSNE(n_components=2, perplexity=min(30, len(batch) - 1) / 2, init="pca", random_state=a.seed).fit_transform(emb)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[:, 0], xy[:, 1], c=np.repeat(np.arange(len(batch) // k), k), cmap="tab20", s=18)
    ax.set_title(f"t-SNE of one {len(batch) // k}×{k} test batch")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(a.out / "tsne.png", dpi=110)
    plt.close(fig)


def curves(a) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
    if (a.out / "denoise_log.csv").exists():
        import pandas as pd

        d = pd.read_csv(a.out / "denoise_log.csv")
        axes[0].plot(d.step, d.l1, label="denoiser L1")
        axes[0].plot(d.step, d.identity_l1, label="identity L1", alpha=0.6)
        axes[0].set(xlabel="step", ylabel="grey levels", title="denoise")
        axes[0].legend()
    if (a.out / "log.csv").exists():
        import pandas as pd

        d = pd.read_csv(a.out / "log.csv")
        axes[1].plot(d.step, d.loss, lw=0.6, label="loss")
        ax2 = axes[1].twinx()
        ax2.step(d.step, d.batch, color="C3", where="post", label="batch size")
        ax2.set_ylabel("batch size")
        axes[1].set(xlabel="step", ylabel="triplet loss", title="descriptor")
    if (a.out / "map_log.csv").exists():
        import pandas as pd

        d = pd.read_csv(a.out / "map_log.csv")
        if len(d):
            axes[2].plot(d.step, d.matching_map, marker="o")
        axes[2].set(xlabel="step", ylabel="matching mAP", title="matching mAP (3 test sequences × 500 patches)")
    fig.tight_layout()
    fig.savefig(a.out / "curves.png", dpi=110)
    plt.close(fig)


def run(a: argparse.Namespace, rt: Runtime) -> dict:
    """One configuration: the stages in order, in the run folder ``a.out``."""
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if rt.main:  # rank 0 extracts or builds the data (and its cache); the others read it afterwards
        ds, split = load_data(a)
    rt.barrier()
    if not rt.main:
        ds, split = load_data(a)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    config.update(synthetic_data=ds.synthetic, split=split, device_used=str(rt.device), precision_used=rt.precision, world_size=rt.world)
    if rt.main:
        (a.out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    results = {}
    for stage in a.stage_list:
        if stage == "denoise" and not ((a.resume or getattr(a, "shared_denoise", False)) and (a.out / "denoised.npz").exists()):
            stage_denoise(a, ds, split, rt)
        elif stage == "descriptor" and not (a.resume and (a.out / "descriptor.pt").exists() and _descriptor_done(a)):
            stage_descriptor(a, ds, split, rt)
        elif stage == "evaluate" and rt.main:
            # on XLA the evaluation runs on the CPU: ragged last batches would each compile a new graph
            results = stage_evaluate(a, ds, split, torch.device("cpu") if rt.device.type == "xla" else rt.device)
        rt.barrier()
    if rt.main:
        curves(a)
        if not a.quiet:
            print(f"run folder {a.out} ({time.perf_counter() - t0:.0f} s)")
    return results


def _descriptor_done(a: argparse.Namespace) -> bool:
    """Whether the checkpoint already holds the whole requested training (steps, or the epochs' patch budget)."""
    path = a.out / "checkpoint.pt"
    if not path.exists():
        return False
    state = torch.load(path, weights_only=False, map_location="cpu")
    if a.epochs is not None:
        return state.get("seen", 0) >= int(a.epochs * state.get("train_patches", float("inf")))
    return state["step"] >= a.steps


def run_all(argv: list[str] | None, a: argparse.Namespace, rt: Runtime) -> dict:
    """Every preset into ``OUT/<preset>``, one denoiser per denoiser type, and ``OUT/experiments.md``."""
    if a.sequences is not None:
        if rt.main:
            extract_sequences(a)
        rt.barrier()
        a.data, a.sequences = a.out / "extracted", None
    denoised_by: dict[tuple, Path] = {}
    table = {}
    for name in PRESETS:
        b = build_parser().parse_args(argv)
        b.experiment, b.out, b.data, b.sequences = name, a.out / name, a.data, None
        b = resolve(b)
        if name in INIT_FROM and b.init_descriptor is None and (a.out / INIT_FROM[name] / "descriptor.pt").exists():
            b.init_descriptor = a.out / INIT_FROM[name] / "descriptor.pt"
        if not rt.main:
            b.quiet = True
        key = (b.denoiser, b.denoise_steps, b.denoise_batch, b.denoise_lr, b.precision, b.seed)
        source = denoised_by.get(key)
        b.out.mkdir(parents=True, exist_ok=True)
        if source is not None and "denoise" in b.stage_list:
            if rt.main and not (b.out / "denoised.npz").exists():
                for file in ("denoised.npz", "denoiser.pt", "denoise_log.csv"):
                    if (source / file).exists():
                        shutil.copy2(source / file, b.out / file)
            rt.barrier()
            b.shared_denoise = True
        if not b.quiet:
            print(f"== experiment {name} ==")
        table[name] = run(b, rt)
        denoised_by.setdefault(key, b.out)
    if rt.main and all(table.values()):
        experiments_table(a.out, table)
    return table


def experiments_table(out: Path, table: dict[str, dict]) -> None:
    """The study's table: one row per preset, then the baselines evaluated on each denoiser's output."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tabulate import tabulate

    tasks = ("verification", "matching", "retrieval")
    rows, baselines = [], {}
    for name, res in table.items():
        config = json.loads((out / name / "config.json").read_text())
        start = Path(config["init_descriptor"]).parent.name if config.get("init_descriptor") else "scratch"
        rows.append([name, config["denoiser"], config["miner"], config["margin_fn"], config["stages_sk"], start] + [res["ours (L2-Net)"][t] for t in tasks])
        for base in ("SIFT", "raw pixels"):
            baselines.setdefault((base, config["denoiser"]), [res[base][t] for t in tasks])
    for (base, den), vals in baselines.items():
        rows.append([base, den, "", "", "", ""] + vals)
    config = json.loads((out / next(iter(table)) / "config.json").read_text())
    data = "SYNTHETIC embedded default" if config.get("synthetic_data") else config["data"]
    md = [f"# The study's experiments on {data} ({len(config['split']['test'])} test sequences held out from training)", "",
          tabulate(rows, headers=["experiment", "denoiser", "miner", "margin", "S×K stages", "starts from"] + list(tasks), tablefmt="github", floatfmt=".4f"), ""]
    (out / "experiments.md").write_text("\n".join(md))
    (out / "experiments.json").write_text(json.dumps({r[0] + ("" if r[0] in table else f" ({r[1]})"): dict(zip(tasks, r[6:])) for r in rows}, indent=1))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        ax.bar(np.arange(3) + i * width, r[6:], width, label=r[0] if r[0] in table else f"{r[0]} ({r[1]})")
    ax.set_xticks(np.arange(3) + 0.4 - width / 2)
    ax.set_xticklabels(tasks)
    ax.set_ylabel("mAP")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "experiments.png", dpi=110)
    plt.close(fig)
    print("\n".join(md))


def _xla_worker(index: int, argv: list[str]) -> None:
    """One replica under ``torch_xla.launch``: the process-group environment comes from the PJRT runtime."""
    import torch_xla.runtime as xr

    os.environ.update(WORLD_SIZE=str(xr.world_size()), RANK=str(xr.global_ordinal()), LOCAL_RANK=str(xr.local_ordinal()))
    main([x for x in argv if x != "--xla-launch"])


def main(argv: list[str] | None = None) -> dict:
    a = resolve(build_parser().parse_args(argv))
    if a.xla_launch:
        if a.device != "xla":
            raise SystemExit("error: --xla-launch needs --device xla")
        pick_device("xla")  # a clear error when torch-xla is missing
        import torch_xla

        torch_xla.launch(_xla_worker, args=(list(sys.argv[1:] if argv is None else argv),))
        return {}
    if a.threads:
        torch.set_num_threads(a.threads)
    rt = setup_runtime(a)
    if not rt.main:
        a.quiet = True
    try:
        return run_all(argv, a, rt) if a.experiment == "all" else run(a, rt)
    finally:
        if rt.ddp:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":
    main()
