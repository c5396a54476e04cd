"""Training: `python -m bavit.train {detector,classifier,finetune} ...`.

Recipe (../shared/notes/training-facts.md): zero-initialised HF embeddings re-initialised,
anchored boxes and a conv stem (model options), deep supervision of the detection tokens of
the upper half of the layers, and a dense per-patch class head (training only). Seeded, with
a deterministic data order derived from the step, so a resumed run continues exactly where
its last checkpoint stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from bavit.classifier import DEFAULT_WIDTH, TokenClassifier
from bavit.data import DataError, load_dataset, parse_data
from bavit.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from bavit.detectors import patch_of
from bavit.encode import encode, label_mode_for
from bavit.losses import SetLoss
from bavit.pruning import TokenSelector, dilate, keep_count
from bavit.reducers.bavit import BavitPipeline
from bavit.validate import score
from bavit.yolos import CONFIGS, PrunedYolos, init_embeddings

STATE = "train_state.pt"
_MEAN = IMAGENET_MEAN[:, None, None]
_STD = IMAGENET_STD[:, None, None]
DEFAULT_STEPS = {"detector": 6000, "classifier": 2000, "finetune": 1500}
FINETUNE_TOP_SHARE = 0.2  # a keep range's steps that run at its top (keep 1.0: the dense detector)
DEFAULT_LR = {"detector": 1e-3, "classifier": 5e-4, "finetune": 1e-4}
DROP_MIN_KEEP = 0.3  # token-drop keep ratios are drawn from [DROP_MIN_KEEP, 1]
HALO_KERNEL = 5      # token-drop "near" steps: background within this window of an object first
ENCODED_FORMAT = 1   # bump when TensorSet's tensors change: cached encodings of older ones are not reused


def _encoding_key() -> str:
    """The code that turns a sample into training tensors, hashed: a cached encoding made by
    other code is not reused (ENCODED_FORMAT covers TensorSet's own layout)."""
    import hashlib

    import bavit.data.preprocess
    import bavit.encode
    import bavit.labels

    h = hashlib.sha256()
    for module in (bavit.encode, bavit.labels, bavit.data.preprocess):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:12]


class TensorSet:
    """A data split held in memory as tensors; batch `step` is a pure function of (seed, step)."""

    def __init__(self, dataset, size: int, patch: int, mode: str, n: int | None, desc: str) -> None:
        """Pixels are kept as the 8-bit image they came from (20k images at 256 px: 3.9 GB,
        not 16 GB of float32); padding, the mean colour, comes back within 0.01."""
        n = len(dataset) if n is None else min(n, len(dataset))
        self.pixels = torch.empty(n, 3, size, size, dtype=torch.uint8)
        self.boxes, self.labels, fg, pcls = [], [], [], []
        for i in tqdm(range(n), desc=desc, leave=False):
            e = encode(dataset[i], size, patch, mode)
            rgb = e.pixels * _STD + _MEAN
            self.pixels[i] = torch.from_numpy(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
            self.boxes.append(torch.from_numpy(e.boxes))
            self.labels.append(torch.from_numpy(e.labels))
            fg.append(e.token_fg)
            pcls.append(e.patch_class)
        self.token_fg = torch.from_numpy(np.stack(fg))
        self.patch_class = torch.from_numpy(np.stack(pcls))
        self.grid = (size // patch, size // patch)

    @classmethod
    def cached(cls, data: str, dataset, size: int, patch: int, mode: str, n: int | None, desc: str) -> "TensorSet":
        """A synthetic split is generated once, deterministically, into its own cache folder:
        its encoding is kept there too, so a resumed run does not re-encode 20k images (about
        5 minutes on 2 cores). Other data sets are encoded each time: their files can change."""
        root = dataset.ann_file.parents[1] if data == "synthetic" and hasattr(dataset, "ann_file") else None
        if root is None:
            return cls(dataset, size, patch, mode, n, desc)
        count = len(dataset) if n is None else min(n, len(dataset))
        path = root / f"encoded-v{ENCODED_FORMAT}-{_encoding_key()}-s{size}-p{patch}-{mode}-n{count}.pt"
        if path.is_file():
            try:
                self = cls.__new__(cls)
                self.__dict__.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
                self.grid = tuple(self.grid)
                return self
            except Exception as err:  # noqa: BLE001 - a torn or stale file is re-encoded
                print(f"re-encoding: {path} unreadable ({type(err).__name__})", file=sys.stderr)
        self = cls(dataset, size, patch, mode, n, desc)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        try:
            torch.save(dict(self.__dict__, grid=list(self.grid)), tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)   # a save cut short leaves no 4 GB file behind
        return self

    def __len__(self) -> int:
        return len(self.pixels)

    def batch(self, step: int, size: int, seed: int, augment: bool = True) -> dict:
        per_epoch = len(self) // size
        epoch, pos = divmod(step, per_epoch)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        idx = order[pos * size:(pos + 1) * size]
        flips = torch.rand(size, 2, generator=torch.Generator().manual_seed(seed * 7919 + step)) < 0.5
        pixels = (self.pixels[idx].float() / 255 - torch.from_numpy(_MEAN)) / torch.from_numpy(_STD)
        fg = self.token_fg[idx].view(size, *self.grid)
        pcls = self.patch_class[idx].view(size, *self.grid)
        targets = []
        for j, i in enumerate(idx.tolist()):
            boxes = self.boxes[i].clone()
            hflip, vflip = (flips[j] & augment).tolist()
            if hflip:
                pixels[j], fg[j], pcls[j] = pixels[j].flip(-1), fg[j].flip(-1), pcls[j].flip(-1)
                boxes[:, 0] = 1 - boxes[:, 0]
            if vflip:
                pixels[j], fg[j], pcls[j] = pixels[j].flip(-2), fg[j].flip(-2), pcls[j].flip(-2)
                boxes[:, 1] = 1 - boxes[:, 1]
            targets.append({"boxes": boxes, "labels": self.labels[i]})
        return {"pixels": pixels, "targets": targets, "token_fg": fg.reshape(size, -1).float(),
                "patch_class": pcls.reshape(size, -1)}


def token_drop(token_fg: torch.Tensor, grid: tuple[int, int], step: int, seed: int,
               p: float) -> torch.Tensor | None:
    """Token-drop augmentation for a dense detector: with probability `p` a step sees only
    K = keep * N patch tokens, keep drawn from [DROP_MIN_KEEP, 1]: the ground-truth
    foreground tokens first, then background ones. Half of those steps take background at
    random (context spread over the image, as `--bg-share` keeps it); the other half take
    the background within HALO_KERNEL x HALO_KERNEL of an object first (as BAViT's logits
    rank it), leaving far regions empty. A detector trained from scratch on synthetic
    scenes leans on far background tokens as context and loses 12 mAP points at keep 0.5;
    this teaches it to do without them at any keep ratio, with no BAViT in the loop and no
    keep ratio singled out (unlike `finetune`). Seeded by step: a resumed run redraws the
    same tokens."""
    g = torch.Generator().manual_seed(seed * 15485863 + step)
    if p <= 0 or torch.rand((), generator=g).item() >= p:
        return None
    keep = DROP_MIN_KEEP + (1 - DROP_MIN_KEEP) * torch.rand((), generator=g).item()
    k = keep_count(keep, token_fg.shape[1])
    near = torch.rand((), generator=g).item() < 0.5
    noise = torch.rand(token_fg.shape, generator=g)
    bg = (dilate(token_fg, grid, HALO_KERNEL) + noise) / 2 if near else noise       # in [0, 1)
    return (token_fg + bg).topk(k, dim=1).indices.sort(dim=1).values               # fg in [1, 2)


def step_keep(keep: tuple[float, float], step: int, seed: int) -> float:
    """The keep ratio of a fine-tuning step with BAViT in the loop. A range (lo, hi) gives one
    detector for every keep ratio a sweep may ask of it: FINETUNE_TOP_SHARE of the steps run
    at hi (with hi = 1.0, the dense detector the sweep also measures, which must not lose what
    the pruned ones gain), the rest uniform in [lo, hi]. Seeded by step: a resumed run redraws
    the same ratios."""
    lo, hi = keep
    if lo >= hi:
        return hi
    g = torch.Generator().manual_seed(seed * 2654435761 % 2**31 + step)
    if torch.rand((), generator=g).item() < FINETUNE_TOP_SHARE:
        return hi
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def autocast(enabled: bool):
    """bf16 autocast for the transformer on CPUs with bf16 units: 1.6x faster `ti` training
    steps here (2.3 s vs 3.7 s per batch of 32, 2 threads); detection heads and losses stay
    fp32 (box regression needs more than bf16's 8 mantissa bits)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def detector_loss(model: PrunedYolos, dense_head: nn.Module, criterion: SetLoss, batch: dict,
                  keep_idx: torch.Tensor | None = None, bf16: bool = False) -> dict:
    """Set loss with deep supervision, plus the dense per-token class head on the encoder's
    patch outputs (what a token-pruned detector must keep informative)."""
    if model.family == "detr":
        return _detr_loss(model, dense_head, criterion, batch, keep_idx, bf16)
    with autocast(bf16):
        hidden = model.forward_features(batch["pixels"], keep_idx)
    hidden = [h.float() for h in hidden]
    d = model.config.num_detection_tokens
    n_layers = len(hidden)
    out = {}
    total = 0.0
    for i in range(n_layers // 2 - 1, n_layers):            # deep supervision: upper half
        tokens = model.det.vit.layernorm(hidden[i])
        logits, boxes = model.heads(tokens[:, -d:])
        losses = criterion(logits, boxes, batch["targets"])
        total = total + losses["loss"]
        if i == n_layers - 1:
            out.update({k: v for k, v in losses.items() if k != "loss"})
    patches = model.det.vit.layernorm(hidden[-1])[:, 1:-d]
    pcls = batch["patch_class"] if keep_idx is None else batch["patch_class"].gather(1, keep_idx)
    dense = F.cross_entropy(dense_head(patches).transpose(1, 2), pcls)
    out["dense"] = dense.detach()
    out["loss"] = total + dense
    return out


def _detr_loss(model, dense_head: nn.Module, criterion: SetLoss, batch: dict,
               keep_idx: torch.Tensor | None, bf16: bool) -> dict:
    """DETR's own recipe: the set loss after every decoder layer (auxiliary loss), and the
    dense head on the encoder's outputs."""
    with autocast(bf16):
        memory, pos = model.encode(batch["pixels"], keep_idx)
        decoded = model.decode(memory, pos, every_layer=True)
    out, total = {}, 0.0
    for i, queries in enumerate(decoded):
        logits, boxes = model.heads(queries.float())
        losses = criterion(logits, boxes, batch["targets"])
        total = total + losses["loss"]
        if i == len(decoded) - 1:
            out.update({k: v for k, v in losses.items() if k != "loss"})
    pcls = batch["patch_class"] if keep_idx is None else batch["patch_class"].gather(1, keep_idx)
    dense = F.cross_entropy(dense_head(memory.float()).transpose(1, 2), pcls)
    out["dense"] = dense.detach()
    out["loss"] = total + dense
    return out


def param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for m in modules:
        for name, p in m.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or "token" in name or "position" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def torch_runner(model: nn.Module):
    def run(pixels: np.ndarray):
        with torch.no_grad():
            return tuple(t.numpy() for t in model(torch.from_numpy(pixels)))
    return run


def build(args) -> tuple[dict[str, nn.Module], object]:
    """Trainable modules, plus the frozen helper the mode needs (finetune: the BAViT that prunes)."""
    if args.mode == "classifier" and args.shared:
        from bavit.reducers.shared import SharedTrunkClassifier
        return {"model": SharedTrunkClassifier(_load_detector(args.shared, args.image_size),
                                               args.layers)}, None
    if args.mode == "classifier":
        det = _load_detector(args.init, args.image_size) if args.init else _fresh_detector(args)
        width = args.width or (DEFAULT_WIDTH.get(args.size) if det.family == "yolos" else None)
        return {"model": TokenClassifier.for_detector(det, args.layers, width)}, None
    if args.mode == "detector":
        det = _load_detector(args.init, args.image_size) if args.init else _fresh_detector(args)
        det.config.box_frame = "input"   # the targets below are fractions of the padded input
        if det.family == "detr":
            det.thaw_backbone()
        dense = nn.Linear(det.config.hidden_size, det.config.num_labels + 1)
        return {"model": det, "dense_head": dense}, None
    det = _load_detector(args.detector, args.image_size)
    det.config.box_frame = "input"
    if det.family == "detr":
        det.thaw_backbone()
    cls = TokenClassifier.from_pretrained(args.classifier).eval()
    if cls.grid != det.grid:
        raise ValueError(f"--classifier {args.classifier}: BAViT grid {cls.grid} != detector grid {det.grid}")
    dense = nn.Linear(det.config.hidden_size, det.config.num_labels + 1)
    return {"model": det, "dense_head": dense}, cls


def _fresh_detector(args):
    """A new detector of --family at --size: YOLOS (tiny, ti) or DETR (bavit.detr)."""
    torch.manual_seed(args.seed)
    if args.family == "detr":
        from bavit.detr import PrunedDetr, detr_config, tiny_detr_config
        det = PrunedDetr({"tiny": tiny_detr_config, "ti": detr_config}[args.size]())
        if det.box_bias is not None:
            det.init_anchors()
        return det
    det = PrunedYolos(CONFIGS[args.size]())
    init_embeddings(det, seed=args.seed)
    return det


def _load_detector(path: str, image_size: int | None):
    """A detector folder of either family, by its config's model_type."""
    from bavit.checkpoint import load_config
    from bavit.detectors import detector_class
    return detector_class(load_config(path)).from_pretrained(path, image_size)


def validate(args, modules, frozen, val_set_ds, image_size: int, patch: int) -> dict:
    """Scores on the first --val-images of the val split. A fine-tune is scored at each of
    its --val-keep ratios, mAP as `map@K` (token figures are BAViT's, the same at every K)."""
    if args.mode != "finetune":
        return _validate_at(args, modules, frozen, val_set_ds, image_size, patch, 1.0)
    res: dict = {}
    for k in args.val_keep:
        r = _validate_at(args, modules, frozen, val_set_ds, image_size, patch, k)
        res.update({key: v for key, v in r.items() if key not in ("map", "ap50", "ap75")})
        res.update({f"map@{k:g}": r["map"], f"ap50@{k:g}": r.get("ap50"), f"ap75@{k:g}": r.get("ap75")})
    return res


def _validate_at(args, modules, frozen, val_set_ds, image_size: int, patch: int, keep: float) -> dict:
    model = modules["model"].eval()
    idx = list(range(min(args.val_images, len(val_set_ds))))
    try:
        if args.mode == "classifier":
            pipe_run = lambda px: (np.zeros((len(px), 1, 2)), np.zeros((len(px), 1, 4)),  # noqa: E731
                                   model(torch.from_numpy(px)).detach().numpy())
            res = score(pipe_run, val_set_ds, image_size, patch, idx, batch=32, label_mode=args.labels,
                        with_map=False)
        else:
            pipe = BavitPipeline(model, frozen if keep < 1.0 else None, keep).eval()
            res = score(torch_runner(pipe), val_set_ds, image_size, patch, idx, batch=32, label_mode=args.labels)
    finally:
        model.train()
    res.pop("detections", None)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE
    try:  # everything a bad option or file can break, before the first step
        modules, frozen = build(args)
        model = modules["model"]
        cfg = model.config
        image_size, patch = cfg.image_size[0], patch_of(cfg)
        if cfg.image_size[0] != cfg.image_size[1]:
            raise ValueError(f"detector image_size {cfg.image_size[0]}x{cfg.image_size[1]} is not square; "
                             "training runs square inputs: pass --image-size N")
        if parse_data(args.data).one_set:
            raise DataError(f"--data {args.data}: one set of images, but training needs a train and a val split "
                            "(pass coco:ROOT, voc:ROOT or yolo:PATH/data.yaml)")
        train_ds = load_dataset(args.data, "train", size=image_size, n_images=args.train_images)
        val_ds = load_dataset(args.data, "val", size=image_size, n_images=args.val_data_images)
        mode = label_mode_for(train_ds, args.labels)
        train_set = TensorSet.cached(args.data, train_ds, image_size, patch, mode, args.train_images,
                                     "encoding train split")
        if len(train_set) < args.batch:
            raise ValueError(f"--batch {args.batch}: the train split has only {len(train_set)} images")
        args.image_size, args.train_count = image_size, len(train_set)
        optim = torch.optim.AdamW(param_groups(list(modules.values()), 1e-4), lr=args.lr)
        step, wall, history = 0, 0.0, []
        if state_path.exists() and not args.fresh:
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            try:
                for k, m in modules.items():
                    m.load_state_dict(state[k])
                optim.load_state_dict(state["optim"])
            except (KeyError, RuntimeError, ValueError):
                raise ValueError(f"{state_path}: a checkpoint of another mode or model; "
                                 "use --fresh or another --out") from None
            step, wall = state["step"], state["wall_s"]
            history = state.get("history", [])
            print(f"resumed from {state_path} at step {step}")
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"bavit.train: error: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    criterion = SetLoss(num_classes=cfg.num_labels)
    for m in modules.values():
        m.train()
    last_ckpt = time.monotonic()
    t0 = time.monotonic() - wall
    bar = tqdm(total=args.steps, initial=step, desc=args.mode, dynamic_ncols=True)
    with _stop_on_signals() as stop:
        while step < args.steps:
            if stop:
                _save_state(state_path, modules, optim, step, time.monotonic() - t0, args, history)
                bar.close()
                print(f"stopped by {stop[0].name} at step {step}: checkpoint in {state_path}", file=sys.stderr)
                return 128 + int(stop[0])
            for g in optim.param_groups:
                g["lr"] = args.lr * lr_at(step, args.steps, args.warmup)
            batch = train_set.batch(step, args.batch, args.seed)
            if args.mode == "classifier":
                with autocast(args.bf16):
                    logits = model(batch["pixels"])
                loss = F.binary_cross_entropy_with_logits(logits.float(), batch["token_fg"])
                stats = {"loss": loss}
            else:
                if frozen is not None:
                    keep = step_keep(args.keep, step, args.seed)
                    with torch.no_grad():
                        keep_idx = TokenSelector(model.grid, keep)(frozen(batch["pixels"]))
                else:
                    keep_idx = token_drop(batch["token_fg"], model.grid, step, args.seed, args.token_drop)
                stats = detector_loss(model, modules["dense_head"], criterion, batch, keep_idx, args.bf16)
                loss = stats["loss"]
            optim.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for m in modules.values() for p in m.parameters()], 1.0)
            optim.step()
            step += 1
            bar.update(1)
            bar.set_postfix({k: f"{float(v.detach()):.3f}" for k, v in stats.items()})
            done = step == args.steps
            if args.eval_every and (step % args.eval_every == 0 or done):
                res = validate(args, modules, frozen, val_ds, image_size, patch)
                history.append({"step": step, "wall_s": round(time.monotonic() - t0, 1), **_figures(res, args.mode)})
                bar.write(json.dumps(history[-1]))
            if done or time.monotonic() - last_ckpt > args.ckpt_minutes * 60:
                _save_state(state_path, modules, optim, step, time.monotonic() - t0, args, history)
                last_ckpt = time.monotonic()
    bar.close()
    wall = time.monotonic() - t0
    res = validate(args, modules, frozen, val_ds, image_size, patch)
    figures = _figures(res, args.mode)
    model.save_pretrained(out)
    _write_card(out, args, figures, wall, history)
    print(json.dumps({"out": str(out), "step": step, "wall_s": round(wall, 1), **figures}))
    return 0


@contextmanager
def _stop_on_signals():
    """While training steps run, SIGINT / SIGTERM end the run after the step in progress, with
    a checkpoint: pausing a training for a benchmark (or a session ending with SIGTERM) loses
    no step. A second signal stops at once; the previous handlers come back on leaving
    (validation and saving the weights, and callers of `main` in the same process)."""
    import signal

    got: list = []

    def handler(num: int, frame: Any) -> None:
        if got:
            raise KeyboardInterrupt
        got.append(signal.Signals(num))

    before = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)


def _figures(res: dict, mode: str) -> dict:
    """A dense detector has no BAViT: its token figures would be meaningless, so they go."""
    keys = ("map", "ap50", "ap75", "images") if mode == "detector" else (
        "map", "ap50", "ap75", "token_acc", "fg_recall", "fg_precision", "images")
    keys += tuple(k for k in res if k.startswith(("map@", "ap50@", "ap75@")))
    return {k: (round(float(res[k]), 4) if isinstance(res.get(k), float) else res.get(k)) for k in keys if k in res}


def _save_state(path: Path, modules, optim, step: int, wall: float, args, history: list[dict]) -> None:
    state = {k: m.state_dict() for k, m in modules.items()}
    state.update(optim=optim.state_dict(), step=step, wall_s=wall, args=vars(args), history=history)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _start(args) -> str:
    if args.mode == "finetune":
        lo, hi = args.keep
        if lo == hi:
            return f"detector {args.detector}, pruned in the loop by {args.classifier} at keep {hi:g}"
        return (f"detector {args.detector}, pruned in the loop by {args.classifier} (default options) at a keep "
                f"ratio drawn per step: {hi:g} on {FINETUNE_TOP_SHARE:.0%} of the steps, else uniform in "
                f"[{lo:g}, {hi:g}]")
    if getattr(args, "shared", None):
        return (f"a fresh head (seeded) on the frozen first {args.layers} layers of {args.shared} "
                "(the bavit-shared reducer; only the LayerNorm and the linear head train)")
    start = args.init or f"fresh {args.family} {args.size} detector (seeded)"
    if getattr(args, "token_drop", 0):
        start += (f"; token drop: {args.token_drop:g} of the steps see ground-truth foreground plus background "
                  f"tokens (at random, or nearest objects first), keep ratio uniform in [{DROP_MIN_KEEP:g}, 1]")
    return start


def _write_card(out: Path, args, figures: dict, wall: float, history: list[dict]) -> None:
    cmd = "python -m bavit.train " + " ".join(shlex.quote(a) for a in args.argv)
    lines = [f"# {out.name}", "", f"- command: `{cmd}`", f"- mode: {args.mode}; starts from: {_start(args)}",
             f"- seed: {args.seed}",
             f"- data: {args.data}, {args.image_size}x{args.image_size}; train split {args.train_count} images; "
             f"validation: first {args.val_images} images of the val split (synthetic: seed 0, 500 images)",
             f"- steps: {args.steps}, batch {args.batch}, lr {args.lr}, threads {args.threads}, "
             + ("bf16 autocast (encoder)" if args.bf16 else "fp32"),
             f"- wall time: {wall / 60:.1f} min (summed over resumed sittings)",
             f"- validation: `{json.dumps(figures)}`", "", "## Validation curve", ""]
    # "map", or "map@K" per --val-keep; a classifier has none, its curve is token accuracy alone
    maps = [k for k in figures if k.startswith("map")] or (["map"] if args.mode != "classifier" else [])
    head = ["step", "wall s", *(f"mAP{k[3:]}" for k in maps), "token acc"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(v) for v in [h["step"], h["wall_s"], *(h.get(k, "") for k in maps),
                                                 h.get("token_acc", "")]) + " |" for h in history]
    (out / "CARD.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m bavit.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    for name, hlp in (("detector", "train a YOLOS detector"), ("classifier", "train a BAViT token classifier"),
                      ("finetune", "sparse fine-tuning of a detector with BAViT pruning in the loop")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("--data", default="synthetic", help="synthetic | coco:ROOT | voc:ROOT | yolo:PATH/data.yaml "
                       "(a train and a val split)")
        s.add_argument("--size", choices=sorted(CONFIGS), default="tiny", help="model scale for a fresh detector")
        s.add_argument("--family", choices=["yolos", "detr"], default="yolos",
                       help="detector family of a fresh detector (DETR: transformers' ResNet backbone, bavit.detr)")
        s.add_argument("--labels", choices=["masks", "boxes"], default=None,
                       help="token labels from masks or boxes (default: masks when the data set has them)")
        s.add_argument("--out", required=True, help="output folder (checkpoint, weights, CARD.md)")
        s.add_argument("--steps", type=int, default=DEFAULT_STEPS[name])
        s.add_argument("--batch", type=int, default=32)
        s.add_argument("--lr", type=float, default=DEFAULT_LR[name])
        s.add_argument("--warmup", type=int, default=200)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
        s.add_argument("--train-images", type=int, default=None, help="cap on training images")
        s.add_argument("--val-images", type=int, default=256, help="validation images scored")
        s.add_argument("--val-data-images", type=int, default=None, help=argparse.SUPPRESS)
        s.add_argument("--eval-every", type=int, default=500, help="steps between validations (0: end only)")
        s.add_argument("--ckpt-minutes", type=float, default=3.0, help="minutes between resumable checkpoints")
        s.add_argument("--image-size", type=int, default=None,
                       help="re-grid a loaded (stock HF, non-square) detector for N x N inputs")
        s.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
        s.add_argument("--bf16", action="store_true",
                       help="bf16 autocast for the transformer (CPUs with bf16 units; weights stay fp32)")
        if name == "classifier":
            s.add_argument("--layers", type=int, default=2, help="BAViT depth (paper: 2 or 10)")
            s.add_argument("--init", default=None, help="detector folder whose first blocks start BAViT")
            s.add_argument("--width", type=int, default=None,
                           help="BAViT width (default: per --size, 96 for ti; the detector's for tiny)")
            s.add_argument("--shared", default=None, metavar="DETECTOR",
                           help="train a head on this detector's own first --layers layers, frozen (the "
                                "bavit-shared reducer) instead of a separate BAViT")
        elif name == "detector":
            s.add_argument("--init", default=None, help="local checkpoint to start from (HF YOLOS folder)")
            s.add_argument("--token-drop", type=float, default=0.0, metavar="P",
                           help="share of steps trained on a token subset (ground-truth foreground plus "
                                f"background, keep uniform in [{DROP_MIN_KEEP:g}, 1]): a detector "
                                "that keeps its mAP when BAViT prunes, without a sparse fine-tune per keep ratio")
        else:
            s.add_argument("--detector", required=True, help="dense detector folder to fine-tune")
            s.add_argument("--classifier", required=True, help="BAViT folder that prunes in the loop")
            s.add_argument("--keep", default="0.5", metavar="K|LO:HI",
                           help="keep ratio pruned to in the loop, or a range LO:HI: one detector for every "
                                f"keep in it ({FINETUNE_TOP_SHARE:.0%}% of the steps at HI, the rest uniform)")
            s.add_argument("--val-keep", default=None, metavar="K,K",
                           help="keep ratios validated (default: LO, the middle and HI of --keep, or K)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.mode == "finetune":
        try:
            args.keep = _keep_range(args.keep)
            args.val_keep = (sorted({_val_keep(k) for k in args.val_keep.split(",")}, reverse=True)
                             if args.val_keep else sorted({args.keep[1], round(sum(args.keep) / 2, 4),
                                                           args.keep[0]}, reverse=True))
        except ValueError as err:
            p.error(str(err))
    for option in ("steps", "batch", "threads", "layers"):
        if getattr(args, option, 1) < 1:
            p.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    if not 0 <= getattr(args, "token_drop", 0.0) <= 1:
        p.error(f"--token-drop must be in [0, 1], got {args.token_drop}")
    if args.mode != "finetune":
        args.keep = (1.0, 1.0)
    return args


def _val_keep(text: str) -> float:
    try:
        keep = float(text)
    except ValueError:
        keep = -1.0
    if not 0 < keep <= 1:
        raise ValueError(f"--val-keep {text!r}: keep ratios in (0, 1], comma-separated")
    return keep


def _keep_range(text: str) -> tuple[float, float]:
    """"K" or "LO:HI" -> (lo, hi), each in (0, 1], lo <= hi."""
    try:
        lo, hi = (float(v) for v in text.split(":")) if ":" in text else (float(text),) * 2
    except ValueError:
        raise ValueError(f"--keep {text!r}: expected K or LO:HI with ratios in (0, 1]") from None
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"--keep {text!r}: ratios must satisfy 0 < LO <= HI <= 1")
    return lo, hi


if __name__ == "__main__":
    sys.exit(main())
