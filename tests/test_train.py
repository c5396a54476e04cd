"""Training: the loss falls, a resumed run continues from its checkpoint, and the committed
demo weights are really trained."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bavit.data import load_dataset
from bavit.losses import SetLoss
from bavit.train import DROP_MIN_KEEP, FINETUNE_TOP_SHARE, TensorSet, detector_loss, main, step_keep, token_drop
from bavit.yolos import PrunedYolos, init_embeddings, tiny_config

ROOT = Path(__file__).resolve().parents[1]
TI_DENSE_BAR = 0.60  # ti detector, 64-image slice at 256 px: measured 0.698 (step 6000)


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = PrunedYolos(tiny_config())
    init_embeddings(model, seed=0)
    dense = torch.nn.Linear(128, 5)
    data = TensorSet(load_dataset("synthetic", "train", size=64, n_images=16), 64, 8, "masks", None, "enc")
    batch = data.batch(0, 16, seed=0, augment=False)
    crit = SetLoss(num_classes=4)
    opt = torch.optim.AdamW(list(model.parameters()) + list(dense.parameters()), lr=1e-3)
    with torch.no_grad():
        before = detector_loss(model, dense, crit, batch)["loss"].item()
    for _ in range(15):
        loss = detector_loss(model, dense, crit, batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = detector_loss(model, dense, crit, batch)["loss"].item()
    assert after < 0.9 * before


def test_pruned_finetune_loss_uses_kept_tokens_only():
    torch.manual_seed(0)
    model = PrunedYolos(tiny_config())
    dense = torch.nn.Linear(128, 5)
    data = TensorSet(load_dataset("synthetic", "train", size=64, n_images=8), 64, 8, "masks", None, "enc")
    batch = data.batch(0, 8, seed=0)
    keep = torch.arange(0, 64, 2).expand(8, -1)
    crit = SetLoss(num_classes=4)

    def loss_with_noise_on(positions):
        """Loss when the patch embeddings at `positions` are replaced by noise."""
        def hook(_module, _inputs, out):
            out = out.clone()
            out[:, positions] = torch.randn(out.shape[0], len(positions), out.shape[-1]) * 10
            return out
        handle = model.patch_embeddings.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return detector_loss(model, dense, crit, batch, keep)["loss"].item()
        finally:
            handle.remove()

    with torch.no_grad():
        clean = detector_loss(model, dense, crit, batch, keep)["loss"].item()
    assert torch.isfinite(torch.tensor(clean))
    assert loss_with_noise_on(list(range(1, 64, 2))) == pytest.approx(clean, abs=1e-6)  # pruned: no effect
    assert abs(loss_with_noise_on(list(range(0, 64, 2))) - clean) > 1e-3                  # kept: changes it


def test_token_drop_keeps_foreground_then_background_near_or_random():
    grid = (16, 16)
    fg = torch.zeros(4, 16, 16)
    fg[:, 7:9, 7:9] = 1                                 # 4 foreground tokens per image, mid-grid
    halo = torch.zeros(16, 16, dtype=torch.bool)
    halo[5:11, 5:11] = True                             # within HALO_KERNEL (5) of them
    fg, halo = fg.view(4, -1), halo.view(-1)
    draws = [token_drop(fg, grid, step, seed=0, p=1.0) for step in range(60)]
    sizes = {d.shape[1] for d in draws}
    assert len(sizes) > 10 and min(sizes) >= round(DROP_MIN_KEEP * 256) and max(sizes) <= 256
    near = []
    for d in draws:
        assert (d[:, 1:] > d[:, :-1]).all()             # sorted, no repeats: the detector's token order
        assert fg.gather(1, d).sum(1).eq(4).all()       # every foreground token kept
        near.append(bool(halo[d].sum(1).eq(int(halo.sum())).all()))  # the whole halo kept
    small = [(d, n) for d, n in zip(draws, near) if d.shape[1] < 150]
    assert any(n for _, n in small) and any(not n for _, n in small)  # both kinds of background draw
    assert any(not torch.equal(d[0], d[1]) for d, n in small if not n)  # random background per image
    assert torch.equal(token_drop(fg, grid, 7, 0, 1.0), token_drop(fg, grid, 7, 0, 1.0))  # resumable
    assert token_drop(fg, grid, 3, 0, 0.0) is None
    assert 0.3 < sum(token_drop(fg, grid, s, 0, 0.5) is not None for s in range(200)) / 200 < 0.7


def test_token_drop_option_trains_and_is_checked(tmp_path, capsys):
    common = ["detector", "--out", str(tmp_path), "--train-images", "16", "--batch", "8", "--val-images", "8",
              "--val-data-images", "8", "--eval-every", "0", "--threads", "1", "--steps", "2"]
    with pytest.raises(SystemExit):
        main(common + ["--token-drop", "1.5"])
    assert "--token-drop must be in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(common + ["--token-drop", "1.0"]) == 0
    assert "token drop: 1 of the steps" in (tmp_path / "CARD.md").read_text()


def test_resume_continues_from_saved_step(tmp_path, capsys):
    common = ["detector", "--out", str(tmp_path), "--train-images", "64", "--batch", "8", "--val-images", "8",
              "--val-data-images", "16", "--eval-every", "0", "--threads", "1", "--warmup", "2"]
    assert main(common + ["--steps", "3"]) == 0
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == 3
    first = {k: v.clone() for k, v in state["model"].items()}
    capsys.readouterr()
    assert main(common + ["--steps", "5"]) == 0
    assert "resumed from" in capsys.readouterr().out
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["step"] == 5
    assert any(not torch.equal(first[k], v) for k, v in state["model"].items())
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "CARD.md").is_file()
    # the same folder, another mode: refused in one line, the checkpoint left alone
    capsys.readouterr()
    assert main(["classifier", *common[1:], "--steps", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("train_state.pt: a checkpoint of another mode or model; use --fresh or another --out")
    assert "\n" not in err and torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 5


@pytest.mark.parametrize("extra,needle", [
    (["--init", "/does/not/exist"], "no config.json in weights folder"),
    (["--batch", "100"], "--batch 100: the train split has only 64 images"),
    (["--data", "coco:{tmp}/a.json,{tmp}"], "one set of images, but training needs a train and a val split"),
])
def test_bad_training_input_is_one_line(tmp_path, capsys, extra, needle):
    argv = ["detector", "--out", str(tmp_path), "--train-images", "64", "--val-data-images", "16",
            "--threads", "1", "--steps", "1", *extra]
    (tmp_path / "a.json").write_text("{}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def _score_slice(pipe) -> dict:
    """The fixed 64-image validation slice every committed-weights test scores."""
    from bavit.train import torch_runner
    from bavit.validate import score

    size, patch = pipe.input_size[0], pipe.detector.config.patch_size
    val = load_dataset("synthetic", "val", size=size)
    return score(torch_runner(pipe), val, size, patch, list(range(64)), batch=32)


@pytest.mark.parametrize("scale,bar", [("tiny", 0.45), ("ti", TI_DENSE_BAR)])
def test_committed_detector_weights_are_trained(scale, bar):
    """Fails if the committed detector is untrained or barely trained (mAP@[.5:.95])."""
    from bavit.reducers.bavit import BavitPipeline

    det = PrunedYolos.from_pretrained(ROOT / "weights" / scale / "detector")
    res = _score_slice(BavitPipeline(det, None, 1.0).eval())
    assert res["map"] >= bar, res


@pytest.mark.parametrize("scale", ["tiny", "ti"])
def test_committed_sparse_finetune_recovers_pruned_map(scale):
    """At keep 0.5 the sparse fine-tuned detector must beat the dense one it started from
    (same BAViT-2, same 64-image slice): fails if fine-tuning did nothing or hurt."""
    from bavit.classifier import TokenClassifier
    from bavit.reducers.bavit import BavitPipeline

    root = ROOT / "weights" / scale
    cls = TokenClassifier.from_pretrained(root / "bavit2")
    maps = {}
    for name in ("detector", "detector-sparse-keep0.5"):
        pipe = BavitPipeline(PrunedYolos.from_pretrained(root / name), cls, 0.5).eval()
        maps[name] = _score_slice(pipe)["map"]
    assert maps["detector-sparse-keep0.5"] >= maps["detector"] + 0.01, maps


def test_committed_tokendrop_detector_holds_map_when_pruned():
    """The token-drop ti detector (no sparse fine-tune) must stay within the issue's 3 points
    of its own dense mAP at keep 0.5 with BAViT-2, dilate 3, bg-share 0.25 (slice: 0.714 vs
    0.703), and beat the plain detector pruned the same way (0.626): fails if token drop did
    nothing."""
    from bavit.classifier import TokenClassifier
    from bavit.reducers.bavit import BavitPipeline

    root = ROOT / "weights" / "ti"
    cls = TokenClassifier.from_pretrained(root / "bavit2")
    pruned = BavitPipeline.Options(bg_share=0.25, dilate=3)
    dense_td = PrunedYolos.from_pretrained(root / "detector-tokendrop")
    dense = _score_slice(BavitPipeline(dense_td, None, 1.0).eval())["map"]
    kept = _score_slice(BavitPipeline(dense_td, cls, 0.5, pruned).eval())["map"]
    plain = _score_slice(BavitPipeline(PrunedYolos.from_pretrained(root / "detector"), cls, 0.5, pruned).eval())["map"]
    assert dense >= TI_DENSE_BAR and kept >= dense - 0.03 and kept >= plain + 0.03, (dense, kept, plain)


def test_committed_pruning_aware_detector_pays_at_keep_half():
    """The pruning-aware ti detector (`detector-prune`, what `bench.run --detector auto` adds)
    at keep 0.5 with plain BAViT-2 must stay within the issue's 1 point of the plain
    detector's dense mAP, and beat the plain detector pruned the same way by far (500-image
    figures: 0.722, 0.696, 0.573): fails if the fine-tune did not take, or the wrong
    weights were committed."""
    from bavit.classifier import TokenClassifier
    from bavit.reducers.bavit import BavitPipeline

    root = ROOT / "weights" / "ti"
    cls = TokenClassifier.from_pretrained(root / "bavit2")
    plain = PrunedYolos.from_pretrained(root / "detector")
    dense = _score_slice(BavitPipeline(plain, None, 1.0).eval())["map"]
    plain_half = _score_slice(BavitPipeline(plain, cls, 0.5).eval())["map"]
    aware_half = _score_slice(BavitPipeline(PrunedYolos.from_pretrained(root / "detector-prune"), cls, 0.5).eval())["map"]
    assert aware_half >= dense - 0.01 and aware_half >= plain_half + 0.08, (dense, plain_half, aware_half)


@pytest.mark.parametrize("scale,layers,bar", [("tiny", 2, 0.90), ("tiny", 10, 0.95), ("ti", 2, 0.90), ("ti", 10, 0.95)])
def test_committed_bavit_weights_separate_tokens(scale, layers, bar):
    """The issue's token-accuracy bars, on a fixed 64-image validation slice."""
    from bavit.classifier import TokenClassifier
    from bavit.validate import score

    cls = TokenClassifier.from_pretrained(ROOT / "weights" / scale / f"bavit{layers}")
    size, patch = cls.config.image_size[0], cls.config.patch_size
    val = load_dataset("synthetic", "val", size=size, n_images=64)

    def run(px):
        import numpy as np
        with torch.no_grad():
            tokens = cls(torch.from_numpy(px)).numpy()
        return np.zeros((len(px), 1, 5)), np.zeros((len(px), 1, 4)), tokens

    res = score(run, val, size, patch, list(range(64)), batch=32, with_map=False)
    assert res["token_acc"] >= bar, res


def test_non_square_init_trains_at_image_size(tmp_path, capsys):
    det = PrunedYolos(tiny_config(image_size=[64, 96], conv_stem=False, anchored_boxes=False))
    init_embeddings(det, seed=0)
    det.save_pretrained(tmp_path / "stock")
    argv = ["detector", "--init", str(tmp_path / "stock"), "--out", str(tmp_path / "out"), "--train-images", "16",
            "--batch", "8", "--val-images", "8", "--val-data-images", "8", "--eval-every", "0", "--threads", "1",
            "--steps", "1"]
    assert main(argv) == 2
    assert "image_size 64x96 is not square" in capsys.readouterr().err
    assert main(argv + ["--image-size", "64"]) == 0
    assert PrunedYolos.from_pretrained(tmp_path / "out").grid == (8, 8)


def test_synthetic_train_split_encoding_is_kept_on_disk(tmp_path, monkeypatch):
    """The second encoding of a synthetic split is read back, tensor for tensor; the cached
    file lives in the split's own (deterministic) folder."""
    monkeypatch.setenv("BAVIT_CACHE", str(tmp_path))
    ds = load_dataset("synthetic", "train", size=64, n_images=12)
    first = TensorSet.cached("synthetic", ds, 64, 16, "masks", None, "encode")
    files = list(tmp_path.glob("synthetic-*/encoded-v*-s64-p16-masks-n12.pt"))
    assert len(files) == 1
    monkeypatch.setattr(TensorSet, "__init__", lambda *a, **k: pytest.fail("encoded again"))
    again = TensorSet.cached("synthetic", ds, 64, 16, "masks", None, "encode")
    assert again.grid == first.grid == (4, 4) and len(again) == 12
    for name in ("pixels", "token_fg", "patch_class"):
        assert torch.equal(getattr(first, name), getattr(again, name))
    assert all(torch.equal(a, b) for a, b in zip(first.boxes, again.boxes))
    assert all(torch.equal(a, b) for a, b in zip(first.labels, again.labels))
    b1, b2 = first.batch(1, 4, 0), again.batch(1, 4, 0)
    assert torch.equal(b1["pixels"], b2["pixels"])


def test_a_stop_signal_checkpoints_the_step_reached(tmp_path, capsys, monkeypatch):
    import contextlib
    import signal

    import bavit.train as train

    class After(list):            # the signal arrives once two steps are done
        checks = 0

        def __bool__(self):
            self.checks += 1
            if self.checks == 3 and not len(self):
                self.append(signal.SIGTERM)
            return len(self) > 0

    real = train._stop_on_signals

    @contextlib.contextmanager
    def flagged():
        with real():             # the real handlers go in and come back out
            yield After()

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train, "_stop_on_signals", flagged)
    common = ["detector", "--out", str(tmp_path), "--train-images", "16", "--batch", "8", "--val-images", "8",
              "--val-data-images", "16", "--eval-every", "0", "--threads", "1", "--warmup", "2", "--steps", "9"]
    assert main(common) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM at step 2" in capsys.readouterr().err
    assert torch.load(tmp_path / "train_state.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "model.safetensors").exists()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_keep_range_draws_its_top_a_fifth_of_the_time_and_spans_the_range():
    """finetune --keep 0.25:1: the dense detector (keep 1) a fifth of the steps, the rest
    spread over [0.25, 1]; the same step always draws the same keep (a resumed run)."""
    draws = [step_keep((0.25, 1.0), step, seed=0) for step in range(2000)]
    top = sum(k == 1.0 for k in draws) / len(draws)
    assert top == pytest.approx(FINETUNE_TOP_SHARE, abs=0.03)
    rest = [k for k in draws if k < 1.0]
    assert min(rest) < 0.3 and max(rest) > 0.95 and all(0.25 <= k < 1.0 for k in rest)
    assert sum(k < 0.625 for k in rest) / len(rest) == pytest.approx(0.5, abs=0.05)   # uniform
    assert draws[:50] == [step_keep((0.25, 1.0), step, seed=0) for step in range(50)]
    assert step_keep((0.5, 0.5), 7, seed=0) == 0.5


def test_finetune_over_a_keep_range_validates_each_keep(tmp_path, capsys):
    common = ["finetune", "--detector", str(ROOT / "weights/tiny/detector"), "--classifier",
              str(ROOT / "weights/tiny/bavit2"), "--out", str(tmp_path), "--train-images", "16", "--batch", "8",
              "--val-images", "8", "--val-data-images", "8", "--eval-every", "2", "--threads", "1", "--steps", "2"]
    for bad in ("0:1", "0.5:0.25", "1.5", "a:b"):
        with pytest.raises(SystemExit):
            main(common + ["--keep", bad])
        assert f"--keep '{bad}'" in capsys.readouterr().err
    assert main(common + ["--keep", "0.25:1", "--val-keep", "1,0.25"]) == 0
    card = (tmp_path / "CARD.md").read_text()
    assert "| step | wall s | mAP@1 | mAP@0.25 | token acc |" in card
    assert "at a keep ratio drawn per step: 1 on 20% of the steps, else uniform in [0.25, 1]" in card
    maps = {k: float(v) for k, v in (kv.split(": ") for kv in card.split("validation: `{")[1].split("}")[0]
                                     .replace('"', "").split(", ")) if k.startswith("map@")}
    assert set(maps) == {"map@1", "map@0.25"} and maps["map@1"] > maps["map@0.25"]   # pruning to 16 of 64 costs mAP


@pytest.mark.parametrize("command", ["detector", "classifier", "finetune"])
def test_each_training_command_prints_its_help(command, capsys):
    """A '%' in a help string formats only at --help time, so a broken one hides until a user asks."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--out" in capsys.readouterr().out
