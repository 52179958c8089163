"""The HPatches pipeline: denoise → descriptor → evaluate, with tripletkit's miners, margins and training blocks.

    python examples/hpatches/train.py                                   # embedded default data, all stages
    python examples/hpatches/train.py --data DIR --experiment bh1024    # a preset of the study's table
    python examples/hpatches/train.py --out runs/x --resume             # continue an interrupted run exactly
    python examples/hpatches/train.py --experiment all --data DIR       # every preset, one table

Stages (``--stages denoise,descriptor,evaluate``) read the previous stage's output from the run folder:

* ``denoise`` (`denoise`): a U-Net trained with L1 on (noisy, clean) pairs, then
  applied to every patch (``denoised.npz``). Data without noise is noised first with our documented noise model.
* ``descriptor`` (`descriptor`): L2-Net on S×K batches that grow with the
  stepped-batch schedule, a collapse probe, atomic checkpoints; ``--resume`` continues exactly.
* ``evaluate`` (`evaluate`): the three HPatches tasks for our descriptor, SIFT and
  raw pixels; ``results.md``, ``results.json`` and figures (`reports`).

Every flag is declared and read in `config`; devices, precision and DDP are in
`runtime`. ``config.json`` records the resolved configuration the run used. Numbers on the
embedded default are on SYNTHETIC data and say so.

Several processes: ``torchrun --nproc_per_node=W examples/hpatches/train.py ...`` trains with DDP (gloo on CPU, nccl
on CUDA, the ``xla`` backend with ``--device xla``); the loss mines over the gathered W·S·K batch and every replica
changes stage together. Rank 0 prepares the data, writes logs and checkpoints (with every rank's RNG state) and
evaluates.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import torch

from tripletkit.training import atomic_write_text
from tripletkit_hpatches import reports
from tripletkit_hpatches.config import INIT_FROM, PRESETS, Config, build_parser, parse, resolve
from tripletkit_hpatches.runtime import Runtime, require_xla, setup_runtime
from tripletkit_hpatches.stages.data import data_folder, load_data
from tripletkit_hpatches.stages.denoise import denoise_done, run_denoise
from tripletkit_hpatches.stages.descriptor import descriptor_done, run_descriptor
from tripletkit_hpatches.stages.evaluate import run_evaluate

DENOISER_OUTPUTS = ("denoised.npz", "denoiser.pt", "denoise_log.csv")


def run(cfg: Config, rt: Runtime) -> dict:
    """One configuration: the stages in order, in the run folder ``cfg.out``; returns the results summary."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    progress = not cfg.quiet
    if rt.main:  # rank 0 extracts or builds the data (and its cache); the others read it afterwards
        data = data_folder(cfg.data, cfg.sequences, cfg.out, cfg.seed, progress)
    rt.barrier()
    if not rt.main:
        data = data_folder(cfg.data, cfg.sequences, cfg.out, cfg.seed, progress)
    ds, split = load_data(data, cfg.seed, progress, cfg.tasks, cfg.split, cfg.val_sequences)
    cfg = cfg.replace(data=data, sequences=None).for_data(16 * sum(ds.num_patches(s) for s in split["train"]), rt.world)
    cfg = cfg.for_device(rt.device.type)
    if rt.main:
        config = cfg.as_json() | {
            "synthetic_data": ds.synthetic,
            "split_sequences": split,
            "device_used": str(rt.device),
            "precision_used": rt.precision,
            "world_size": rt.world,
        }
        atomic_write_text(cfg.out / "config.json", json.dumps(config, indent=1, default=str))
    results: dict = {}
    for stage in cfg.stages:
        if stage == "denoise" and not ((cfg.resume or cfg.shared_denoise) and denoise_done(cfg.out)):
            run_denoise(cfg, ds, split, rt)
        elif stage == "descriptor" and not (cfg.resume and descriptor_done(cfg)):
            run_descriptor(cfg, ds, split, rt)
        elif stage == "evaluate" and rt.main:
            # on XLA the evaluation runs on the CPU: ragged last batches would each compile a new graph
            ev = run_evaluate(cfg, ds, split, torch.device("cpu") if rt.xla else rt.device)
            text = reports.write_results(cfg, ds, ev)
            if progress:
                print(text)
            results = ev.summary
        rt.barrier()
    if rt.main:
        reports.curves(cfg.out)
        if progress:
            print(f"run folder {cfg.out} ({time.perf_counter() - t0:.0f} s)")
    return results


def run_all(argv: list[str] | None, cfg: Config, rt: Runtime) -> dict:
    """Every preset into ``OUT/<preset>``, one denoiser per denoiser type, and ``OUT/experiments.md``."""
    data = cfg.data
    if rt.main:
        data = data_folder(cfg.data, cfg.sequences, cfg.out, cfg.seed, not cfg.quiet)
    rt.barrier()
    if not rt.main:
        data = data_folder(cfg.data, cfg.sequences, cfg.out, cfg.seed, False)
    denoised_by: dict[tuple, object] = {}
    table = {}
    for name in PRESETS:
        b = resolve(
            build_parser().parse_args(argv),
            experiment=name,
            out=cfg.out / name,
            data=data,
            sequences=None,
            quiet=cfg.quiet,
        )
        if name in INIT_FROM and b.init_descriptor is None and (cfg.out / INIT_FROM[name] / "descriptor.pt").exists():
            b = b.replace(init_descriptor=cfg.out / INIT_FROM[name] / "descriptor.pt")
        key = (b.denoiser, b.denoise_steps, b.denoise_epochs, b.denoise_batch, b.denoise_lr, b.precision, b.seed)
        source = denoised_by.get(key)
        b.out.mkdir(parents=True, exist_ok=True)
        if source is not None and "denoise" in b.stages:
            if rt.main and not (b.out / "denoised.npz").exists():
                for file in DENOISER_OUTPUTS:
                    if (source / file).exists():
                        shutil.copy2(source / file, b.out / file)
            rt.barrier()
            b = b.replace(shared_denoise=True)
        if not b.quiet:
            print(f"== experiment {name} ==")
        table[name] = run(b, rt)
        denoised_by.setdefault(key, b.out)
    if rt.main and all(table.values()):
        text = reports.experiments_table(cfg.out, table)
        if not cfg.quiet:
            print(text)
    return table


def _xla_worker(index: int, argv: list[str]) -> None:
    """One replica under ``torch_xla.launch``: the process-group environment comes from the PJRT runtime."""
    import torch_xla.runtime as xr

    os.environ.update(
        WORLD_SIZE=str(xr.world_size()), RANK=str(xr.global_ordinal()), LOCAL_RANK=str(xr.local_ordinal())
    )
    main([x for x in argv if x != "--xla-launch"])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(argv)
    if cfg.xla_launch:
        if cfg.device != "xla":
            raise SystemExit("error: --xla-launch needs --device xla")
        require_xla()  # a clear error when torch-xla is missing; the runtime itself starts inside launch
        import torch_xla

        torch_xla.launch(_xla_worker, args=(list(sys.argv[1:] if argv is None else argv),))
        return {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = setup_runtime(cfg.device, cfg.precision, cfg.compile)
    if not rt.main:
        cfg = cfg.replace(quiet=True)
    try:
        return run_all(argv, cfg, rt) if cfg.experiment == "all" else run(cfg, rt)
    finally:
        rt.close()


if __name__ == "__main__":
    main()
