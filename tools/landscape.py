"""The width of the optima for a pair of finished runs (same twin and seed; SWA and SGD):

    python tools/landscape.py --swa results/cpu/vgg16-swa35-s3-torch \\
        --sgd results/cpu/vgg16-sgd35-s3-torch --data_path ../shared/data/cifar-10-python.tar.gz

measures the line from the SWA solution to the SGD one and (``--rays``) random rays from both,
and writes ``<study>/landscape/<pair>.csv``, ``.png`` and ``.json`` (the width summary). It needs
both runs' last checkpoints (``tools/study.py --retrain`` trains a run again where they are gone).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from swa_apps.cli import run  # noqa: E402
from swa_apps.twins import import_twin  # noqa: E402
from swa_recipe.arguments import ArgumentParser
from swa_recipe.checkpoint import CheckpointError, atomic_save  # noqa: E402
from swa_recipe.config import ConfigError, load_yaml, parse_value  # noqa: E402
from swa_recipe.data.cifar import load_splits  # noqa: E402
from swa_recipe.numbers import float_argument, int_argument  # noqa: E402
from swa_recipe.runtime import tune_cpu_env  # noqa: E402
from swa_study import extend, landscape  # noqa: E402

# What both runs of a pair must share (beyond SWA on one side, off on the other).
PAIR_KEYS = (("Global", "framework"), ("Global", "seed"), ("Arch", "model"), ("Arch", "width"),
             ("Arch", "depth"), ("Data", "dataset"))


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Line and random rays around an SWA/SGD pair")
    p.add_argument("--swa", required=True, help="run folder of the SWA run")
    p.add_argument("--sgd", required=True, help="run folder of the SGD run (same twin, seed)")
    p.add_argument("--out", default=None, help="output folder (default <study>/landscape)")
    p.add_argument("--data_path", default=None, help="CIFAR archive or folder")
    p.add_argument("--train_images", type=int_argument(1), default=10000,
                   help="the first N training images, without augmentation (default 10000)")
    p.add_argument("--rays", action="store_true", help="also measure random rays")
    p.add_argument("--directions", type=int_argument(1), default=10,
                   help="random directions (default 10)")
    p.add_argument("--distances", type=int_argument(1), default=8,
                   help="distances per ray (default 8)")
    p.add_argument("--max_distance", type=float_argument(0, strict=True), default=None,
                   help="longest ray (default: where train loss rises by 1 along direction 0 "
                        "from the SGD solution)")
    p.add_argument("--seed", type=int_argument(0), default=0, help="seed of the random directions")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return p


def run_config(run_dir: str, swa: bool) -> tuple[dict, str]:
    """A finished run's config and its last checkpoint."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"{run_dir} holds no config.yaml; pass a run folder of tools/study.py "
                          f"or train.py")
    cfg = load_yaml(path)
    if cfg["SWA"]["swa"] != swa:
        raise ConfigError(f"{run_dir} is {'an SWA' if cfg['SWA']['swa'] else 'an SGD'} run; "
                          f"pass it as --{'swa' if cfg['SWA']['swa'] else 'sgd'}")
    epochs, framework = cfg["Global"]["epochs"], cfg["Global"]["framework"]
    found = extend.final_checkpoint(run_dir, epochs, framework)
    if found is None:
        raise CheckpointError(f"{run_dir} has no checkpoint of its last epoch ({epochs}); train "
                              f"it again with tools/study.py --retrain")
    return cfg, found


def check_pair(swa: dict, sgd: dict) -> None:
    for section, key in PAIR_KEYS:
        if swa[section][key] != sgd[section][key]:
            raise ConfigError(f"the runs differ in {section}.{key} ({swa[section][key]} and "
                              f"{sgd[section][key]}); a landscape compares one twin and seed")


def weights(twin, path: str, key: str) -> dict:
    state = twin.checkpoint.load(path)
    if not isinstance(state, dict) or not isinstance(state.get(key), dict):
        raise CheckpointError(f"{path} holds no {key}; it is not a finished run's checkpoint")
    return state[key]


def write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_save(write, path)


def main(args: argparse.Namespace) -> int:
    if args.train_images < 1 or args.directions < 1 or args.distances < 1:
        raise ConfigError("--train_images, --directions and --distances must be positive")
    swa_cfg, swa_path = run_config(args.swa, True)
    sgd_cfg, sgd_path = run_config(args.sgd, False)
    check_pair(swa_cfg, sgd_cfg)
    cfg = swa_cfg
    if args.data_path:
        cfg["Data"]["data_path"] = parse_value("Data", "data_path", args.data_path)
    cfg["Data"]["train_subset"], cfg["Data"]["test_subset"] = args.train_images, None
    tune_cpu_env()
    twin = import_twin(cfg["Global"]["framework"])
    train, test = load_splits(cfg, training=False)
    probe = twin.landscape.Probe(cfg, weights(twin, sgd_path, "state_dict"), sgd_path,
                                 train, test)
    w_sgd = probe.flat()
    probe.load(weights(twin, swa_path, "swa_state_dict"), swa_path)
    w_swa = probe.flat()
    g = swa_cfg["Global"]
    name = landscape.pair_name(swa_cfg["Arch"]["model"], g["seed"], g["framework"], g["epochs"],
                               sgd_cfg["Global"]["epochs"])
    result = landscape.Landscape(name, cfg["Optimizer"]["wd"])
    result.distance = float(((w_sgd - w_swa) ** 2).sum() ** 0.5)
    print(f"{result.pair}: {len(w_swa)} weights, |w_SGD - w_SWA| = {result.distance:.4g}, "
          f"{len(train.labels)} train / {len(test.labels)} test images", flush=True)
    out = args.out or landscape.default_out(args.swa)
    os.makedirs(out, exist_ok=True)
    base = os.path.join(out, result.pair)
    landscape.measure_line(probe, w_swa, w_sgd, result, log=log)
    write(result, base)  # the line stands on its own if the rays are cut short
    if args.rays:
        d0 = landscape.direction(len(w_swa), args.seed, 0)
        reach = args.max_distance or landscape.calibrate(probe, w_sgd, d0, result.distance / 8)
        result.max_distance = reach
        distances = [reach * i / args.distances for i in range(args.distances + 1)]
        landscape.measure_rays(probe, {"swa": w_swa, "sgd": w_sgd}, result, args.directions,
                               distances, args.seed, log=log)
        write(result, base)
    return 0


def write(result: landscape.Landscape, base: str) -> None:
    """``base``.csv (every point), .json (the width summary) and .png, each atomically."""
    write_text(base + ".csv", landscape.to_csv(result))
    write_text(base + ".json", landscape.to_json(result))
    landscape.plot(result, lambda save: atomic_save(save, base + ".png"))
    print(f"wrote {base}.csv, .json and .png", flush=True)


def log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    arguments = parser().parse_args()
    sys.exit(run(lambda: main(arguments), arguments.debug))
