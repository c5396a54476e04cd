"""DETR as the second detector family: parity with stock HF DETR at keep 1.0, pruning of
the encoder's input, loading, the reducers it takes, and its artifacts on every target."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BACKEND_BATCH as BATCH
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from bavit.detr import PrunedDetr, tiny_detr_config
from bavit.yolos import _gather

# a config no other test uses: other depths, widths and query count, 3 encoder layers
OTHER = dict(d_model=48, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
             encoder_ffn_dim=96, decoder_ffn_dim=80, num_queries=12, num_labels=6,
             backbone_config=ResNetConfig(embedding_size=12, hidden_sizes=[12, 24, 40, 56], depths=[1, 2, 1, 1],
                                          layer_type="basic", out_features=["stage3"]))


def _stock_pair(config: DetrConfig, seed: int = 0):
    """Stock DETR with randomised queries and backbone statistics (HF's init hides mistakes
    there), and ours holding the same weights."""
    torch.manual_seed(seed)
    stock = DetrForObjectDetection(config).eval()
    with torch.no_grad():
        stock.model.query_position_embeddings.weight.normal_(0, 0.5)
        for name, buf in stock.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 1.5)
        for p in stock.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = PrunedDetr(config).eval()
    ours.det.load_state_dict(stock.state_dict())
    return stock, ours


@pytest.mark.parametrize("hw", [(64, 64), (48, 96)])
def test_keep_all_equals_stock_detr(hw):
    stock, ours = _stock_pair(tiny_detr_config(**OTHER, image_size=list(hw)))
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        ref = stock(pixel_values=x)
        logits, boxes = ours(x)
        all_idx = torch.arange(ours.num_patches).expand(2, -1)
        logits_g, boxes_g = ours(x, all_idx)
    assert ours.grid == (hw[0] // 16, hw[1] // 16)
    for got_l, got_b in ((logits, boxes), (logits_g, boxes_g)):
        assert (got_l - ref.logits).abs().max().item() <= 1e-5
        assert (got_b - ref.pred_boxes).abs().max().item() <= 1e-5


def test_pruning_runs_stock_encoder_and_decoder_on_the_kept_tokens():
    """The same as stock DETR's encoder and decoder given only the kept feature tokens and
    their position embeddings (the backbone on the full image), and not the dense output."""
    stock, ours = _stock_pair(tiny_detr_config(**OTHER, image_size=[64, 96]), seed=1)
    x = torch.randn(2, 3, 64, 96)
    idx = torch.tensor([[0, 2, 3, 7, 9, 12, 15, 20], [1, 4, 5, 6, 10, 11, 18, 23]])
    m = stock.model
    with torch.no_grad():
        feats = m.input_projection(m.backbone(x, torch.ones(2, 64, 96))[-1][0])
        pos = m.position_embedding(shape=feats.shape, device="cpu", dtype=torch.float32,
                                   mask=torch.ones(2, *feats.shape[-2:], dtype=torch.bool))
        tokens, pos = _gather(feats.flatten(2).transpose(1, 2), idx), _gather(pos.flatten(2).transpose(1, 2), idx)
        enc = m.encoder(inputs_embeds=tokens, spatial_position_embeddings=pos).last_hidden_state
        queries = m.query_position_embeddings.weight.unsqueeze(0).expand(2, -1, -1)
        dec = m.decoder(inputs_embeds=torch.zeros_like(queries), encoder_hidden_states=enc,
                        spatial_position_embeddings=pos, object_queries_position_embeddings=queries).last_hidden_state
        ref_logits, ref_boxes = stock.class_labels_classifier(dec), stock.bbox_predictor(dec).sigmoid()
        logits, boxes = ours(x, idx)
        dense, _ = ours(x)
    assert (logits - ref_logits).abs().max().item() <= 1e-5 and (boxes - ref_boxes).abs().max().item() <= 1e-5
    assert (logits - dense).abs().max().item() > 1e-3


def test_timm_backbone_config_is_refused_in_one_line(tmp_path):
    from bavit.detectors import load_detector

    config = DetrConfig(use_timm_backbone=True, backbone="resnet50", num_labels=3)
    (tmp_path / "detector").mkdir()
    config.save_pretrained(tmp_path / "detector")
    with pytest.raises(ValueError) as err:
        load_detector(str(tmp_path))
    msg = str(err.value)
    assert "timm backbone cannot load here" in msg and "\n" not in msg and "config.json" in msg


def test_saved_detr_loads_by_its_model_type_and_takes_prefilter_reducers(tmp_path):
    from bavit.detectors import load_detector
    from bavit.reducers import build_pipeline, parse

    _, ours = _stock_pair(tiny_detr_config(), seed=2)
    ours.save_pretrained(tmp_path / "detector")
    loaded, _ = load_detector(str(tmp_path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert isinstance(loaded, PrunedDetr) and torch.equal(loaded(x)[0], ours(x)[0])
    random = build_pipeline(str(tmp_path), parse("random"), 0.5)
    assert random.tokens_kept == 8 and random.num_tokens == 16
    with torch.no_grad():
        logits, boxes, _ = random(x)
    assert logits.shape == (2, 8, 5) and boxes.shape == (2, 8, 4)
    # encoder layers see k tokens; decoder layers' cross-attention half of it
    assert 1.0 < random.ideal_speedup < 2.0
    with pytest.raises(ValueError, match="acts inside a YOLOS encoder; a detr detector takes"):
        build_pipeline(str(tmp_path), parse("tome"), 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["torch", "openvino", "tflite"])
def test_detr_bavit_pipeline_artifact_matches_eager(target, tmp_path):
    """DETR behind a fresh BAViT-2 at keep 0.5 on a 48x96 input, fp32, against eager."""
    from bavit.pipeline import WeightsSource
    from bavit.reducers import parse, reducer_class
    from targets import get_target
    from targets.base import RuntimeOptions

    t = get_target(target)
    why = t.available() or t.build_unavailable()
    if why:
        pytest.skip(f"{target}: {why}")
    _, det = _stock_pair(tiny_detr_config(image_size=[48, 96]), seed=3)
    spec = parse("bavit")
    pipe = reducer_class("bavit").create(det, 0.5, spec.typed_options(), WeightsSource(None, 3, "detr-tiny")).eval()
    assert pipe.classifier.grid == det.grid == (3, 6)
    pixels = np.random.default_rng(1).normal(size=(BATCH, 3, 48, 96)).astype(np.float32)
    with torch.no_grad():
        ref = [o.numpy() for o in pipe(torch.from_numpy(pixels))]
    art = t.prepare(pipe, "fp32", BATCH, None, tmp_path, "detr-tiny-seed3")
    out = get_target(target).load(art, RuntimeOptions(1, batch=BATCH))(pixels)
    for name, tol, r, o in zip(("logits", "boxes", "token_logits"), (1e-3, 1e-4, 1e-3), ref, out):
        diff = float(np.abs(r - o).max())
        assert diff <= tol, (name, diff)


@pytest.mark.slow
@pytest.mark.parametrize("target,reducer,keep", [("openvino", "bavit", 0.5), ("tflite", "none", 1.0)])
def test_detr_int8_artifact_close_to_fp32(target, reducer, keep, tmp_path):
    """DETR int8 (each target's recipe, the same as YOLOS's) against the fp32 artifact of the
    same pipeline: mean |int8 - fp32| / std(fp32) per output, the bound the YOLOS int8 tests
    use, and int8 really executed. The ResNet's residual add + ReLU is in the quantized part
    (LiteRT's add+ReLU annotation failed on the dense DETR while the backbone computed a
    dead stage 4). Two of the four target x reducer pairs, for the suite's time."""
    from bavit.pipeline import WeightsSource
    from bavit.reducers import parse, reducer_class
    from targets import get_target
    from targets.base import RuntimeOptions

    t = get_target(target)
    why = t.available() or t.build_unavailable()
    if why:
        pytest.skip(f"{target}: {why}")
    _, det = _stock_pair(tiny_detr_config(), seed=4)
    spec = parse(reducer)
    pipe = reducer_class(spec.name).create(det, keep, spec.typed_options(), WeightsSource(None, 4, "detr-tiny")).eval()
    rng = np.random.default_rng(2)
    calib = rng.normal(size=(8, 3, 64, 64)).astype(np.float32)
    pixels = rng.normal(size=(BATCH, 3, 64, 64)).astype(np.float32)
    fp32 = t.load(t.prepare(pipe, "fp32", BATCH, None, tmp_path, "detr-tiny-seed4"), RuntimeOptions(1, batch=BATCH))
    runner = t.load(t.prepare(pipe, "int8", BATCH, calib, tmp_path, "detr-tiny-seed4"), RuntimeOptions(1, batch=BATCH))
    assert "i8" in runner.executed_precision
    ref, out = fp32(pixels), runner(pixels)
    for name, r, o in zip(("logits", "boxes", "token_logits"), ref, out):
        rel = float(np.abs(r - o).mean() / max(float(r.std()), 1e-6))
        assert rel <= 0.05, (name, rel)


def test_detr_trains_a_few_steps_and_saves_a_folder_bench_loads(tmp_path):
    """`bavit.train detector --family detr`: DETR's auxiliary set loss plus the dense head
    runs, the saved folder says box_frame input and loads as a DETR."""
    from bavit.detectors import load_detector
    from bavit.train import main

    out = tmp_path / "detr"
    argv = ["detector", "--family", "detr", "--size", "tiny", "--out", str(out), "--train-images", "16",
            "--batch", "4", "--val-images", "4", "--val-data-images", "8", "--eval-every", "0",
            "--threads", "1", "--warmup", "1", "--steps", "2"]
    assert main(argv) == 0
    det, _ = load_detector(str(tmp_path), "detr")
    assert isinstance(det, PrunedDetr) and det.config.box_frame == "input"
    # the backbone trained (HF freezes it, and its norms, for pretrained backbones)
    torch.manual_seed(0)
    fresh = PrunedDetr(tiny_detr_config())
    stem = "det.model.backbone.model.embedder.embedder.convolution.weight"
    assert not torch.equal(det.state_dict()[stem], fresh.state_dict()[stem])
    assert "fresh detr tiny detector" in (out / "CARD.md").read_text()


def test_sine_code_is_hf_grid_code():
    """The query initialisation's sine code at HF's grid points equals HF's own embedding."""
    from bavit.detr import sine_code

    det = PrunedDetr(tiny_detr_config(image_size=[48, 96]))
    gh, gw = det.grid
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    code = sine_code((xs.flatten() + 1.0) / gw, (ys.flatten() + 1.0) / gh, det.config.d_model)
    assert (code - det.spatial_pos[0]).abs().max().item() <= 1e-4


def test_anchored_queries_start_on_their_reference_boxes():
    """With anchored_boxes (ours), every query's box starts at its own anchor whatever the
    image, the first-step matching this recipe relies on; stock configs add no bias."""
    from bavit.yolos import anchor_boxes

    assert PrunedDetr(tiny_detr_config()).box_bias is None
    torch.manual_seed(0)
    det = PrunedDetr(tiny_detr_config(anchored_boxes=True)).eval()
    det.init_anchors()
    with torch.no_grad():
        _, boxes = det(torch.randn(2, 3, 64, 64))
    ref = anchor_boxes(det.config.num_queries).expand(2, -1, -1)
    assert (boxes - ref).abs().max().item() <= 1e-4
    det.det.bbox_predictor.layers[-1].bias.data.fill_(0.5)       # the bias is applied, not the anchor alone
    with torch.no_grad():
        _, moved = det(torch.randn(1, 3, 64, 64))
    assert (moved[0] - ref[0]).abs().min().item() > 1e-3
