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
``curves.png``. Numbers on the embedded default are on SYNTHETIC data and say so.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hpatches.checkpoint import atomic_save, rng_state, set_rng_state  # noqa: E402
from hpatches.baselines import describe, model_descriptors, raw_pixel_descriptors, sift_descriptors  # noqa: E402
from hpatches.data import PatchDataset, load_dataset  # noqa: E402
from hpatches.descriptors import IMAGE_TYPES  # noqa: E402
from hpatches.evaluate import evaluate, results_figure  # noqa: E402
from hpatches.models import L2Net, build_denoiser  # noqa: E402
from hpatches.noise import noise_sequence  # noqa: E402
from hpatches.tasks import generate_verification, write_verification  # noqa: E402
from tripletkit import LOSSES, CollapseMonitor, OfflineMiner, SteppedBatchScheduler, SymmetricSampler  # noqa: E402

STAGES = ("denoise", "descriptor", "evaluate")

# The study's table (../shared/seed): margin 1 as the coursework baseline; Adam 2e-4 for batch hard, stepping the
# batch 64 → 128 (bh128) or 64 → 128 → 384 → 1024 with K 2 → 8 (bh1024).
PRESETS: dict[str, dict] = {
    "baseline": dict(denoiser="shallow", miner="random", margin_fn="hinge", margin=1.0, optimizer="sgd", lr=0.1, stages_sk="25x2", scheduler="none"),
    "soft-baseline": dict(denoiser="deep", miner="random", margin_fn="softplus", margin=0.0, optimizer="sgd", lr=0.1, stages_sk="25x2", scheduler="none"),
    "bh128": dict(denoiser="deep", miner="batch_hard", margin_fn="hinge", margin=1.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4", scheduler="stepped_batch"),
    "bh1024": dict(denoiser="deep", miner="batch_hard", margin_fn="hinge", margin=1.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4,64x6,128x8", scheduler="stepped_batch"),
    "soft-bh1024": dict(denoiser="deep", miner="batch_hard", margin_fn="softplus", margin=0.0, optimizer="adam", lr=2e-4, stages_sk="32x2,32x4,64x6,128x8", scheduler="stepped_batch"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="HPatches pipeline: denoise, descriptor, evaluate.")
    p.add_argument("--data", type=Path, help="hpatches-release or N-HPatches folder (default: the embedded default)")
    p.add_argument("--sequences", type=Path, help="image sequences with homographies: extract an hpatches-release dataset first")
    p.add_argument("--out", type=Path, default=Path("runs/default"))
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--experiment", choices=sorted(PRESETS), help="a preset of the study's table (flags given explicitly win)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "xla"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    # denoiser
    p.add_argument("--denoiser", default=None, choices=["shallow", "deep", "none"])
    p.add_argument("--denoise-steps", type=int, default=300)
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
    p.add_argument("--stages-sk", default=None, help="S×K per stage, e.g. 32x2,32x4 (one entry: a fixed S×K)")
    p.add_argument("--scheduler", default=None, choices=["none", "stepped_batch"])
    p.add_argument("--patience", type=int, default=50)
    p.add_argument("--steps", type=int, default=300, help="descriptor training steps")
    p.add_argument("--augment", default="none", choices=["none", "random", "pair"])
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--monitor-every", type=int, default=50, help="collapse check on a fixed probe batch (eval mode)")
    # evaluation
    p.add_argument("--verification-pairs", type=int, default=50_000)
    p.add_argument("--queries", type=int, default=1000)
    return p


def resolve(a: argparse.Namespace) -> argparse.Namespace:
    defaults = dict(denoiser="shallow", miner="batch_hard", margin_fn="hinge", margin=None, optimizer="adam", lr=2e-4, stages_sk="16x2,16x4,32x4", scheduler="stepped_batch")
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
def load_data(a) -> tuple[PatchDataset, dict]:
    if a.sequences is not None:
        from hpatches.extract import load_sequence
        from hpatches.prepare import _sequence_folders, extract_many

        target = a.out / "extracted"
        if not (target / "dataset.json").exists():
            extract_many([load_sequence(f) for f in _sequence_folders(a.sequences)], target, 2000, a.seed, synthetic=False, progress=not a.quiet)
        a.data = target
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
def stage_denoise(a, ds: PatchDataset, split: dict, device) -> None:
    out = a.out / "denoised.npz"
    torch.manual_seed(a.seed)  # before the model: its initialisation draws from torch's RNG
    model = build_denoiser(a.denoiser)
    if model is None:
        np.savez(out, **ds.noisy)
        return
    from tqdm import tqdm

    model = model.to(device).to(memory_format=torch.channels_last)
    x, _, clean = ds.training_arrays(split["train"], noisy=True)
    opt = torch.optim.Adam(model.parameters(), lr=a.denoise_lr)
    rng = np.random.default_rng(a.seed)
    log = a.out / "denoise_log.csv"
    with log.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "l1", "identity_l1"])
        for step in tqdm(range(1, a.denoise_steps + 1), desc="denoise", disable=a.quiet):
            idx = rng.integers(0, len(x), a.denoise_batch)
            xb = torch.from_numpy(x[idx]).float()[:, None].to(device).contiguous(memory_format=torch.channels_last)
            cb = torch.from_numpy(clean[idx]).float()[:, None].to(device)
            loss = (model(xb) - cb).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            w.writerow([step, f"{loss.item():.4f}", f"{(xb - cb).abs().mean().item():.4f}"])
    torch.save(model.state_dict(), a.out / "denoiser.pt")
    model.eval()
    denoised = {}
    with torch.no_grad():
        for s in ds.sequences:
            arr = ds.noisy[s].reshape(-1, ds.size, ds.size)
            outs = [model(torch.from_numpy(arr[b : b + 2048]).float()[:, None].to(device)).clamp(0, 255).round().byte().cpu().numpy()[:, 0] for b in range(0, len(arr), 2048)]
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


def stage_descriptor(a, ds: PatchDataset, split: dict, device) -> None:
    from tqdm import tqdm

    den = np.load(a.out / "denoised.npz")
    patches = np.concatenate([den[s].reshape(-1, ds.size, ds.size) for s in split["train"]])
    labels = np.concatenate([np.tile(np.arange(ds.num_patches(s)), 16) + off for s, off in zip(split["train"], np.cumsum([0] + [ds.num_patches(s) for s in split["train"]][:-1]))])
    x_all = torch.from_numpy(patches).float()[:, None]
    y_all = torch.from_numpy(labels.astype(np.int64))
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    random.seed(a.seed)
    model = L2Net().to(device).to(memory_format=torch.channels_last)
    # offline: triplets mined from the descriptors of the whole training bank (hardest negative, random positive),
    # re-mined every --offline-every steps; each step trains on S·K // 3 of them
    miner = {"random": {"name": "random", "seed": a.seed}, "batch_hard": "batch_hard", "batch_all": "batch_all", "offline": "random"}[a.miner]
    loss_fn = LOSSES.build("triplet", margin=a.margin, margin_fn=a.margin_fn, distance=a.distance, miner=miner)
    offline = OfflineMiner(distance=a.distance, positive="random", negative="hardest", seed=a.seed) if a.miner == "offline" else None
    mined: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    opt = torch.optim.Adam(model.parameters(), lr=a.lr) if a.optimizer == "adam" else torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)
    sched = SteppedBatchScheduler(a.sk, margin_fn=loss_fn, patience=a.patience, guard=True, guard_patience=4 * a.patience) if a.scheduler == "stepped_batch" else None
    S, K = (sched.S, sched.K) if sched else a.sk[0]
    sampler = SymmetricSampler(labels, S, K, seed=a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    ckpt = a.out / "checkpoint.pt"
    step = 0
    if a.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched:
            sched.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        gen.set_state(state["augment_rng"])
        set_rng_state(state["rng"])
        step = state["step"]
        mined = state.get("mined")
        if offline is not None and state.get("offline_rng") is not None:
            offline.load_state_dict(state["offline_rng"])
    log = a.out / "log.csv"
    if step == 0 or not log.exists():
        log.write_text("step,loss,stage,batch\n")
    else:
        keep = [r for r in log.read_text().splitlines()[1:] if int(r.split(",")[0]) <= step]
        log.write_text("step,loss,stage,batch\n" + "".join(r + "\n" for r in keep))
    monitor = CollapseMonitor(loss_fn, action="warn")
    probe_k = 2 if np.bincount(labels).min() < 4 else 4
    probe = torch.tensor(next(iter(SymmetricSampler(labels, min(64, len(np.unique(labels))), probe_k, seed=a.seed + 1))))
    model.train()
    batches = iter(sampler)
    bar = tqdm(total=a.steps, initial=step, desc="descriptor", disable=a.quiet)
    with log.open("a") as f:
        while step < a.steps:
            if offline is not None:
                if mined is None or step % a.offline_every == 0:
                    mined = _mine_bank(model, x_all, y_all, offline, device)
                b = max(1, sampler.batch_size // 3)
                pick = torch.randint(0, len(mined[0]), (b,), generator=gen)
                idx = torch.cat([mined[0][pick], mined[1][pick], mined[2][pick]])
                xb = x_all[idx].to(device).contiguous(memory_format=torch.channels_last)
                r = torch.arange(b, device=device)
                loss = loss_fn(model(xb), triplets=(r, r + b, r + 2 * b))
            else:
                try:
                    idx = torch.tensor(next(batches))
                except StopIteration:
                    batches = iter(sampler)
                    continue
                yb = y_all[idx]
                xb = _augment(x_all[idx], yb - yb.min(), a.augment, gen).to(device).contiguous(memory_format=torch.channels_last)
                loss = loss_fn(model(xb), yb.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            value = float(loss.detach())
            if sched and sched.step(value):
                sampler.set_batch_shape(sched.S, sched.K)
            f.write(f"{step},{value:.6f},{sched.stage if sched else 0},{sampler.batch_size}\n")
            if step % a.monitor_every == 0:
                # the descriptors as they will be used (eval mode); a CollapseWarning says when they collapse
                model.eval()
                with torch.no_grad():
                    stats = monitor.update(model(x_all[probe].to(device)).cpu(), y_all[probe], value)
                model.train()
                bar.set_postfix(loss=f"{value:.3f}", batch=sampler.batch_size, spread=f"{stats.mean_distance:.3f}")
            else:
                bar.set_postfix(loss=f"{value:.3f}", batch=sampler.batch_size)
            bar.update(1)
            if step % a.checkpoint_every == 0 or step == a.steps:
                f.flush()
                atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched else None,
                              "sampler": sampler.state_dict(), "augment_rng": gen.get_state(), "rng": rng_state(), "step": step,
                              "mined": mined, "offline_rng": offline.state_dict() if offline is not None else None}, ckpt)
                batches = iter(sampler)
    bar.close()
    torch.save(model.state_dict(), a.out / "descriptor.pt")


def _mine_bank(model: torch.nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, miner, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Describe every training patch (eval mode) and mine one triplet per valid anchor from the whole bank."""
    model.eval()
    with torch.no_grad():
        bank = torch.cat([model(x_all[b : b + 2048].to(device)).cpu() for b in range(0, len(x_all), 2048)])
    model.train()
    t = miner(bank, y_all)
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

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
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
    fig.tight_layout()
    fig.savefig(a.out / "curves.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    a = resolve(build_parser().parse_args(argv))
    if a.threads:
        torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds, split = load_data(a)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    config["synthetic_data"] = ds.synthetic
    config["split"] = split
    (a.out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    results = {}
    for stage in a.stage_list:
        if stage == "denoise" and not (a.resume and (a.out / "denoised.npz").exists()):
            stage_denoise(a, ds, split, device)
        elif stage == "descriptor" and not (a.resume and (a.out / "descriptor.pt").exists() and (a.out / "checkpoint.pt").exists() and torch.load(a.out / "checkpoint.pt", weights_only=False)["step"] >= a.steps):
            stage_descriptor(a, ds, split, device)
        elif stage == "evaluate":
            results = stage_evaluate(a, ds, split, device)
    curves(a)
    if not a.quiet:
        print(f"run folder {a.out} ({time.perf_counter() - t0:.0f} s)")
    return results


if __name__ == "__main__":
    main()
