"""Model core: parity with stock HF YOLOS, exact keep counts, pruning policy, export, I/O."""
from __future__ import annotations

import pytest
import torch
from transformers import YolosForObjectDetection

from bavit.classifier import TokenClassifier
from bavit.pipeline import Pipeline
from bavit.pruning import TokenSelector, dilate, keep_count
from bavit.reducers.bavit import BavitPipeline
from bavit.yolos import PrunedYolos, init_embeddings, tiny_config


def _stock_pair(config, seed: int = 0):
    """A stock HF model with randomised embeddings and our model holding the same weights."""
    torch.manual_seed(seed)
    stock = YolosForObjectDetection(config).eval()
    with torch.no_grad():  # HF zero-initialises these, which would hide mistakes
        emb = stock.vit.embeddings
        for p in (emb.cls_token, emb.detection_tokens, emb.position_embeddings):
            p.normal_(0, 0.5)
        if config.use_mid_position_embeddings:
            stock.vit.encoder.interpolation.mid_position_embeddings.normal_(0, 0.5)
    ours = PrunedYolos(config).eval()
    ours.det.load_state_dict(stock.state_dict())
    return stock, ours


SMALL = dict(conv_stem=False, anchored_boxes=False)
YOLOS_S_LIKE = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                    image_size=[128, 160], patch_size=16, num_detection_tokens=20, num_labels=7,
                    use_mid_position_embeddings=True, conv_stem=False, anchored_boxes=False)


@pytest.mark.parametrize("overrides,input_hw", [
    (SMALL, (64, 64)),
    (SMALL, (96, 80)),            # position embeddings interpolated to another size
    (YOLOS_S_LIKE, (128, 160)),
    (YOLOS_S_LIKE, (160, 192)),
])
def test_keep_all_equals_stock_yolos(overrides, input_hw):
    stock, ours = _stock_pair(tiny_config(**overrides))
    x = torch.randn(2, 3, *input_hw)
    with torch.no_grad():
        ref = stock(pixel_values=x)
        logits, boxes = ours(x)
        n = (input_hw[0] // ours.config.patch_size) * (input_hw[1] // ours.config.patch_size)
        all_idx = torch.arange(n).expand(2, -1)
        logits_g, boxes_g = ours(x, all_idx)
    for got_l, got_b in ((logits, boxes), (logits_g, boxes_g)):
        assert (got_l - ref.logits).abs().max().item() <= 1e-5
        assert (got_b - ref.pred_boxes).abs().max().item() <= 1e-5


def test_pruned_tokens_change_output_and_gather_right_tokens():
    """Pruning must drop exactly the unkept tokens: the same result as running stock YOLOS
    attention over a sequence built by hand from the kept tokens only."""
    _, ours = _stock_pair(tiny_config(**SMALL), seed=1)
    x = torch.randn(1, 3, 64, 64)
    keep = torch.tensor([[0, 5, 9, 33, 63]])
    with torch.no_grad():
        emb = ours.embeddings
        patches = ours.patch_embeddings(x) + emb.position_embeddings[:, 1:-16]
        seq = torch.cat([emb.cls_token + emb.position_embeddings[:, :1], patches[:, keep[0]],
                         emb.detection_tokens + emb.position_embeddings[:, -16:]], 1)
        for layer in ours.det.vit.encoder.layer:
            seq = layer(seq)
        seq = ours.det.vit.layernorm(seq)[:, -16:]
        expect_l, expect_b = ours.heads(seq)
        got_l, got_b = ours(x, keep)
        dense_l, _ = ours(x)
    assert torch.allclose(got_l, expect_l, atol=1e-5) and torch.allclose(got_b, expect_b, atol=1e-5)
    assert (got_l - dense_l).norm() > 0.01 * dense_l.norm()  # pruning really changed the input


@pytest.mark.parametrize("n", [64, 256, 300])
def test_keep_count_exact_at_every_ratio(n):
    scores = torch.randn(3, n)
    side = int(n ** 0.5)
    grid = (side, n // side) if side * (n // side) == n else (n, 1)
    for keep in [0.05, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 1.0]:
        k = keep_count(keep, n)
        assert k == int(keep * n + 0.5) or (k == 1 and keep * n < 0.5)
        for bg_share in (0.0, 0.3):
            idx = TokenSelector(grid, keep, bg_share=bg_share)(scores)
            assert idx.shape == (3, k)
            for row in idx:
                assert len(set(row.tolist())) == k and (row.diff() > 0).all()


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2])
def test_bad_keep_ratio(bad):
    with pytest.raises(ValueError, match=r"keep ratio must be in \(0, 1\], got"):
        keep_count(bad, 64)


def test_policy_keeps_top_scores_and_partial_background():
    scores = torch.full((1, 16), -5.0)
    scores[0, [3, 7, 12]] = torch.tensor([3.0, 2.0, 1.0])
    assert TokenSelector((4, 4), keep=3 / 16)(scores).tolist() == [[3, 7, 12]]
    # 8 slots, 25% background share: 6 best-scored + 2 others
    idx = TokenSelector((4, 4), keep=0.5, bg_share=0.25)(scores)[0].tolist()
    assert {3, 7, 12} <= set(idx) and len(idx) == 8


@pytest.mark.parametrize("side", [8, 16])
def test_background_share_spreads_over_the_grid(side):
    """Partial pruning's background slots land one per block, not in stripes: with one
    foreground token and 16 background slots, the 16 picks hit all 16 blocks of a 4x4
    split of the grid (the 1-D bit-reversed raster order filled two columns instead)."""
    n = side * side
    sel = TokenSelector((side, side), keep=17 / n, bg_share=16 / 17)      # K = 17, K_bg = 16
    assert (sel.k, sel.k_bg) == (17, 16)
    scores = torch.full((1, n), -5.0)
    scores[0, 0] = 5.0
    idx = sel(scores)[0].tolist()
    bg = [i for i in idx if i != 0]
    block = side // 4
    assert 0 in idx and len(bg) == 16
    assert len({(i // side // block, i % side // block) for i in bg}) == 16, bg


def test_dilation_grows_token_mask():
    mask = torch.zeros(1, 25)
    mask[0, 12] = 1  # centre of a 5x5 grid
    grown = dilate(mask, (5, 5), 3).view(5, 5)
    expect = torch.zeros(5, 5)
    expect[1:4, 1:4] = 1
    assert torch.equal(grown, expect)
    # the neighbour of a foreground token outranks a higher-scored isolated background token
    scores = torch.full((1, 25), -5.0)
    scores[0, 12] = 4.0
    scores[0, 0] = -0.5
    scores[0, 13] = -3.0
    plain = TokenSelector((5, 5), keep=2 / 25)(scores)[0].tolist()
    grown_sel = TokenSelector((5, 5), keep=2 / 25, dilate=3)(scores)[0].tolist()
    assert plain == [0, 12] and grown_sel == [12, 13]


def _tiny_pipeline(keep: float, **cfg) -> Pipeline:
    torch.manual_seed(0)
    det = PrunedYolos(tiny_config(**cfg)).eval()
    init_embeddings(det, seed=0)
    return BavitPipeline(det, TokenClassifier.from_detector(det, 2), keep).eval()


@pytest.mark.parametrize("cfg", [dict(), SMALL])
def test_export_pipeline_static_shapes(cfg):
    pipe = _tiny_pipeline(0.5, **cfg)
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(pipe, (x,))
    got = program.module()(x)
    ref = pipe(x)
    assert got[0].shape == (2, 16, 5) and got[1].shape == (2, 16, 4)
    for a, b in zip(got, ref):
        assert torch.allclose(a, b, atol=1e-5)


def test_classifier_from_detector_shares_first_blocks():
    pipe = _tiny_pipeline(1.0)
    det, cls = pipe.detector, pipe.classifier
    assert len(cls.layers) == 2
    for mine, theirs in zip(cls.layers, det.det.vit.encoder.layer):
        for (k, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), k


def test_light_bavit_has_its_own_width_and_plain_patch_projection(tmp_path):
    """The ti-style BAViT: narrower than the detector, no conv stem, same token grid; it
    round-trips through save/load and prunes the detector it was sized for."""
    torch.manual_seed(0)
    det = PrunedYolos(tiny_config(stem_width=8)).eval()
    init_embeddings(det, seed=0)
    assert det.patch_embeddings.projection.body[0].out_channels == 8
    cls = TokenClassifier.for_detector(det, 2, width=64)
    assert cls.config.hidden_size == 64 and cls.config.intermediate_size == 256
    assert isinstance(cls.patch_embeddings.projection, torch.nn.Conv2d)
    assert det.config.hidden_size == 128 and det.config.conv_stem  # the detector's config is untouched
    cls.save_pretrained(tmp_path / "bavit")
    pipe = BavitPipeline(det, TokenClassifier.from_pretrained(tmp_path / "bavit"), 0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, _, scores = pipe(x)
        assert torch.allclose(scores, cls.eval()(x), atol=1e-6)
    assert logits.shape == (2, 16, 5) and scores.shape == (2, 64)
    with pytest.raises(ValueError, match="not a multiple of 4 heads"):
        TokenClassifier.for_detector(det, 2, width=66)


def test_save_and_load_from_local_folder(tmp_path):
    pipe = _tiny_pipeline(0.5)
    pipe.detector.save_pretrained(tmp_path / "det")
    pipe.classifier.save_pretrained(tmp_path / "bavit")
    loaded = BavitPipeline(PrunedYolos.from_pretrained(tmp_path / "det"),
                           TokenClassifier.from_pretrained(tmp_path / "bavit"), 0.5).eval()
    assert loaded.detector.config.conv_stem and loaded.detector.config.anchored_boxes
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(loaded(x), pipe(x)):
            assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("mid", [False, True])
def test_stock_hf_folder_loads(tmp_path, mid):
    """HF saves mid-layer position embeddings under their old key (YOLOS-S/B folders)."""
    stock, _ = _stock_pair(tiny_config(**SMALL, use_mid_position_embeddings=mid))
    stock.save_pretrained(tmp_path)
    ours = PrunedYolos.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], stock(pixel_values=x).logits, atol=1e-5)


@pytest.mark.parametrize("size,grid", [(80, (10, 10)), ((48, 112), (6, 14))])
def test_stock_folder_regrids_for_other_inputs(tmp_path, size, grid):
    """Loaded for another H x W (square or not), the stored position embeddings are the ones
    stock YOLOS interpolates on the fly at that shape."""
    cfg = tiny_config(**SMALL, image_size=[64, 96], use_mid_position_embeddings=True)
    stock, _ = _stock_pair(cfg)
    stock.save_pretrained(tmp_path)
    ours = PrunedYolos.from_pretrained(tmp_path, image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    assert ours.grid == grid and list(ours.config.image_size) == [h, w]
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        logits, boxes = ours(x)
        ref = stock(pixel_values=x)
    assert torch.allclose(logits, ref.logits, atol=1e-5) and torch.allclose(boxes, ref.pred_boxes, atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of the patch size 8"):
        PrunedYolos.from_pretrained(tmp_path, image_size=84)
    with pytest.raises(ValueError, match="image size 64x84 is not a multiple of the patch size 8"):
        PrunedYolos.from_pretrained(tmp_path, image_size=(64, 84))


def test_missing_weights_folder_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json in weights folder") as err:
        PrunedYolos.from_pretrained(tmp_path / "nope")
    assert "\n" not in str(err.value)


def test_keep_all_is_the_dense_detector_alone():
    """The baseline of every speed-up: at keep 1.0 BAViT does not run at all."""
    pipe = _tiny_pipeline(1.0)
    calls = []
    pipe.classifier.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, boxes, tokens = pipe(x)
        ref_l, ref_b = pipe.detector(x)
    assert not calls and torch.equal(logits, ref_l) and torch.equal(boxes, ref_b)
    assert not tokens.any()
    assert not pipe.prunes and _tiny_pipeline(0.5).prunes


def test_half_copy_loads_into_float32_and_halves_the_file(tmp_path):
    from bavit.checkpoint import WEIGHTS_NAME, half

    torch.manual_seed(0)
    det = PrunedYolos(tiny_config())
    init_embeddings(det, seed=0)
    det.save_pretrained(tmp_path / "fp32")
    half(tmp_path / "fp32", tmp_path / "fp16")
    size = {d: (tmp_path / d / WEIGHTS_NAME).stat().st_size for d in ("fp32", "fp16")}
    assert size["fp16"] < 0.55 * size["fp32"]
    loaded = PrunedYolos.from_pretrained(tmp_path / "fp16")
    for (name, a), b in zip(det.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == a.dtype, name
        assert torch.equal(b, a.half().to(a.dtype) if a.is_floating_point() else a), name
