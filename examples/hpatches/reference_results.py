"""The reference benchmark's per-task result files, written and read without running code.

hpatches-benchmark's ``hpatches_eval.py`` caches each task's result as ``<results-dir>/<descr>_<task>_<split>.p``
(dill pickles of nested dicts) and its plotting tools (``hpatches_results.py``) read them back. The keys they read:

* verification: ``res[level][negatives][balanced]['auc']`` and ``res[level][negatives]['imbalanced']['ap']``, level
  ``e``/``h``/``t``, negatives ``intra``/``inter``;
* matching: ``res[sequence][level][image]['ap']`` (and ``'sr'``), image 1–5;
* retrieval: ``res[query][level][pool_size]['ap']``, pool sizes 100 … 20000.

`write_reference_results` writes tripletkit's result in that layout (plain dicts of floats, pickle protocol 4, each
file atomically), so the benchmark's tools show our descriptor beside theirs. `read_reference_results` reads such
files, ours or the benchmark's, with `SafeUnpickler`: it resolves only numpy's array and scalar constructors,
``collections.defaultdict`` and protocol 2's bytes encoder; the functions dill pickles as the dicts' default factories (the benchmark's lambdas)
become inert placeholders, never code, and any other global is refused with the file and the name.
`reference_summary` averages them as ``hpatches_results.py`` does (×100).
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import numpy as np

from tripletkit.training.atomic import atomic_write_bytes

__all__ = [
    "SafeUnpickler",
    "UnsafePickleError",
    "write_reference_results",
    "read_reference_results",
    "reference_summary",
    "result_path",
]

LEVELS = ("e", "h", "t")
POOL_SIZES = (100, 500, 1000, 5000, 10000, 15000, 20000)


class UnsafePickleError(ValueError):
    """A result file asks for a global the reader does not allow."""


class _Unbuilt:
    """What dill's function and code constructors return here: a stand-in that takes the state pickle gives it
    (BUILD) and is never run. As a defaultdict's default factory, a missing key raises instead of inventing one."""

    def __setstate__(self, state) -> None:
        pass

    def __call__(self, *args, **kwargs):
        raise KeyError("a result file's default factory is not rebuilt: the key is missing from the file")


def _inert(*args, **kwargs) -> _Unbuilt:
    """Stands in for dill's function/code constructors: what they would build is never built."""
    return _Unbuilt()


_ALLOWED = {
    ("collections", "defaultdict"): collections.defaultdict,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("_codecs", "encode"): __import__("codecs").encode,  # how protocol 2 writes bytes (numpy's raw data included)
}
_multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed the module; pickles name either
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "scalar")] = _multiarray.multiarray.scalar
    _ALLOWED[(_mod, "_reconstruct")] = _multiarray.multiarray._reconstruct
# dill's constructors for the default-factory lambdas of the benchmark's defaultdicts; and the types it names
_DILL_INERT = {"_create_function", "_create_code", "_create_cell", "_create_namedtuple", "_get_attr", "_import_module"}


def _create_array(f, args, state, npdict=None):
    """dill's constructor for numpy arrays (the benchmark's fpr/tpr/pr/rc curves), allowed only with numpy's own
    reconstructor: the array is rebuilt from its pickled state, as plain pickle does, and nothing else runs."""
    if f is not _multiarray.multiarray._reconstruct:
        raise UnsafePickleError(f"an array is built by {getattr(f, '__name__', f)!r}, not numpy's reconstructor")
    array = f(*args)
    array.__setstate__(state)
    return array


class SafeUnpickler(pickle.Unpickler):
    """Resolves only the globals a result file needs; see the module docstring."""

    def __init__(self, file, source: str = "<bytes>") -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("dill._dill", "dill.dill") and (name in _DILL_INERT or name == "_load_type"):
            return _inert
        if module in ("dill._dill", "dill.dill") and name == "_create_array":
            return _create_array
        if name == "__dict__":
            # dill names a lambda's globals by reference to its module's namespace (utils.tasks.__dict__ in the
            # benchmark); the lambda is never built, so an empty dict stands in and no module is imported
            return {}
        raise UnsafePickleError(f"{self.source}: refuses to load {module}.{name} (a result file holds only numbers)")


def _loads(data: bytes, source: str):
    try:
        return SafeUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated, not a pickle, or a structure that fails to build
        raise ValueError(f"{source}: not a readable result pickle ({type(e).__name__}: {e})") from None


def result_path(results_dir: str | Path, descr_name: str, task: str, split: str) -> Path:
    return Path(results_dir) / f"{descr_name}_{task}_{split}.p"


def write_reference_results(result: dict, results_dir: str | Path, descr_name: str) -> list[Path]:
    """Write every task in ``result`` (from ``evaluate``) as ``<descr_name>_<task>_<split>.p``; returns the paths."""
    if not descr_name or "/" in descr_name or descr_name.startswith("."):
        raise ValueError(f"descr_name must be a plain file-name part, got {descr_name!r}")
    split = result["split"]
    written = []
    if "verification_detail" in result:
        v = result["verification_detail"]
        res = {
            lv: {
                kind: {"balanced": {"auc": float(v[lv][kind]["auc"])}, "imbalanced": {"ap": float(v[lv][kind]["ap"])}}
                for kind in ("intra", "inter")
            }
            for lv in LEVELS
        }
        written.append(_dump(res, result_path(results_dir, descr_name, "verification", split)))
    if "matching_detail" in result:
        per = result["matching_detail"]["per_sequence"]
        res = {
            seq: {
                lv: {i: {"ap": float(per[seq][lv][i]["ap"]), "sr": float(per[seq][lv][i]["sr"])} for i in range(1, 6)}
                for lv in LEVELS
            }
            for seq in per
        }
        written.append(_dump(res, result_path(results_dir, descr_name, "matching", split)))
    if "retrieval_detail" in result:
        ap = np.asarray(result["retrieval_detail"]["per_query"])  # (queries, levels, pool sizes)
        pools = sorted(result["retrieval_detail"]["per_pool_size"])
        res = {
            q: {
                lv: {int(k): {"ap": float(ap[q, li, ki])} for ki, k in enumerate(pools)} for li, lv in enumerate(LEVELS)
            }
            for q in range(ap.shape[0])
        }
        written.append(_dump(res, result_path(results_dir, descr_name, "retrieval", split)))
    return written


def _dump(res: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pickle.dumps(res, protocol=4))
    return path


def read_reference_results(results_dir: str | Path, descr_name: str, split: str) -> dict[str, dict]:
    """The task files present for ``descr_name`` and ``split``, each loaded with `SafeUnpickler`."""
    out = {}
    for task in ("verification", "matching", "retrieval"):
        path = result_path(results_dir, descr_name, task, split)
        if path.exists():
            out[task] = _loads(path.read_bytes(), str(path))
    if not out:
        raise ValueError(f"{results_dir}: no {descr_name}_<task>_{split}.p result files")
    return out


def reference_summary(res: dict[str, dict]) -> dict[str, float]:
    """The three numbers ``hpatches_results.py`` prints (mAP ×100), for the tasks present."""
    out: dict[str, float] = {}
    try:
        if "verification" in res:
            v = res["verification"]
            out["verification"] = float(
                np.mean([100 * v[lv][kind]["imbalanced"]["ap"] for lv in LEVELS for kind in ("intra", "inter")])
            )
        if "matching" in res:
            m = res["matching"]
            by_type = {
                kind: [
                    100 * np.mean([np.mean([m[s][lv][i]["ap"] for i in range(1, 6)]) for s in m if s[0] == kind])
                    for lv in LEVELS
                ]
                for kind in ("v", "i")
                if any(s[0] == kind for s in m)
            }
            out["matching"] = float(np.mean([np.mean(vals) for vals in by_type.values()]))
        if "retrieval" in res:
            r = res["retrieval"]
            pools = sorted(next(iter(next(iter(r.values())).values())))
            out["retrieval"] = float(
                np.mean([np.mean([100 * np.mean([r[q][lv][k]["ap"] for q in r]) for k in pools]) for lv in LEVELS])
            )
    except (KeyError, TypeError, StopIteration) as e:
        raise ValueError(f"a result file does not have the benchmark's layout (missing {e})") from None
    return out
