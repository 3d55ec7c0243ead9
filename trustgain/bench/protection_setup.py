"""The protection bench's fixed setting (budget, model families, :func:`config`) and its
models: the surrogates and held-out families, trained or read back from
``$TRUSTGAIN_BENCH_CACHE``; with the row-target and logging helpers every part uses.

Part of the ``protection`` bench area (:mod:`trustgain.bench.protection`), which re-exports
its public names.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from trustgain.protection import ProtectConfig
from trustgain.protection import surrogates as S

EPS = 8
STEPS = 20
ENSEMBLE = ("cnn", "wide", "mlp")
HELD_OUT = ("resnet", "narrow", "vgg", "mobile", "vit")
SKLEARN = ("lr", "svc", "rf")
#: Trainings per held-out torch family by default (its bench seed, then :data:`RETRAIN_SEEDS`).
TRAININGS = 3


def retrain_seeds(trainings: int) -> tuple[int, ...]:
    """Seeds of a held-out torch family's extra trainings when it is read over ``trainings``
    trainings in all: the family's bench seed, then 100, 101, ... Its transfer row is the
    mean over them, since one training's transfer ASR swings by up to 30 points with the seed
    alone (BENCHMARKS.md, protection, eleventh and twenty-ninth sessions)."""
    if isinstance(trainings, bool) or not isinstance(trainings, int) or trainings < 1:
        raise ValueError(f"trainings must be a positive integer, got {trainings!r}")
    return tuple(range(100, 99 + trainings))


#: Each held-out torch family is trained again with these seeds by default.
RETRAIN_SEEDS = retrain_seeds(TRAININGS)


def config(steps: int = STEPS, block: int = 2) -> ProtectConfig:
    """The benchmarked setting: PGD-20, MI, DI, EoT over JPEG/blur/resize/noise, CW margin."""
    return ProtectConfig(eps=EPS, steps=steps, momentum=1.0, diversity=0.5,
                         eot=("jpeg", "blur", "resize", "noise"), kappa=5.0, block=block)


def _train_all(quick: bool, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    cache = os.environ.get("TRUSTGAIN_BENCH_CACHE")
    folder = Path(cache) / ("quick" if quick else "full") if cache else None
    epochs = 1 if quick else 6
    # this order fixes each architecture's training seed (its index)
    archs = ("cnn", "mlp") if quick else ("cnn", "wide", "resnet", "mlp", "narrow", "vgg",
                                          "mobile", "vit")
    models: dict[str, Any] = {}
    if folder is not None and (folder / S.CONFIG_NAME).is_file():
        models = S.load_named(folder)
    missing = [a for a in archs if a not in models]
    for arch in missing:  # seed = the architecture's place in the list, cached or not
        _log(f"training {arch}")
        models[arch] = S.train(arch, x, y, epochs=epochs, seed=archs.index(arch))
    if folder is not None and missing:
        S.save(models, folder, meta={"n_classes": int(y.max()) + 1, "channels": 3},
               overwrite=True)
    models = {a: models[a] for a in archs}
    for kind in ("rf",) if quick else SKLEARN:
        path = folder / f"{kind}.pkl" if folder is not None else None
        if path is not None and path.is_file():
            models[kind] = pickle.loads(path.read_bytes())  # our own cache file only
        else:
            models[kind] = S.train_sklearn(kind, x, y, trees=20 if quick else 200)
            if path is not None:
                path.write_bytes(pickle.dumps(models[kind]))
    return models


def _retrain_held_out(quick: bool, x: np.ndarray, y: np.ndarray,
                      seeds: tuple[int, ...] = RETRAIN_SEEDS) -> dict[str, list[Any]]:
    """Per held-out torch family, its models trained with ``seeds`` (cached: only these are
    read back, and the cache keeps every model it held when new ones are added)."""
    if quick:
        return {}
    cache = os.environ.get("TRUSTGAIN_BENCH_CACHE")
    folder = Path(cache) / "seeds" if cache else None
    cached = folder is not None and (folder / S.CONFIG_NAME).is_file()
    names = [f"{a}-s{seed}" for seed in seeds for a in HELD_OUT]
    models: dict[str, Any] = S.load_named(folder, names) if cached else {}
    missing = [n for n in names if n not in models]
    for name in missing:
        arch, seed = name.split("-s")
        _log(f"training {arch} with seed {seed}")
        models[name] = S.train(arch, x, y, epochs=6, seed=int(seed))
    if folder is not None and missing:
        kept = S.load_named(folder) if cached else {}
        S.save({**kept, **models}, folder, meta={"n_classes": int(y.max()) + 1, "channels": 3},
               overwrite=True)
    return {a: [models[f"{a}-s{seed}"] for seed in seeds] for a in HELD_OUT}


def _target(quick: bool, text: str, ok: bool) -> tuple[str, bool | None]:
    return ("", None) if quick else (text, bool(ok))


def _log(msg: str) -> None:
    import sys

    print(f"[protection bench] {msg}", file=sys.stderr, flush=True)
