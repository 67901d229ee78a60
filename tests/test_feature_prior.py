import io
import math
import socket

import pytest
import torch

from model.feature_prior import (FEATURE_CHANNELS, GATE_FRACTION, FeaturePrior, FineEvidence, PriorFusion,
                                 TailEvidence, fit_prior, fuse, greedy_coreset, guided_sharpen, load_backbone,
                                 nearest_distance)

SIZE = 64  # the prior's side in these tests: an 8 x 8 novelty grid


@pytest.fixture(scope="module")
def backbone():
    return load_backbone()


def surfaces(n, seed=0, size=SIZE):
    """n smooth grey surfaces (n, 3, size, size) in [0, 1]: a gentle gradient plus faint noise."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.4, 0.6, size)
    base = (ramp[None, :] + ramp[:, None]) / 2  # (size, size)
    noise = 0.02 * torch.rand(n, 1, size, size, generator=g)
    return (base + noise).clamp(0, 1).expand(n, 3, size, size).contiguous()


def with_blob(image):
    """A copy of (3, H, W) with a dark square of a quarter of its side pasted in the middle."""
    out = image.clone()
    h, w = out.shape[-2:]
    out[:, 3 * h // 8:5 * h // 8, 3 * w // 8:5 * w // 8] = 0.05
    return out


def test_backbone_loads_from_the_wheel_with_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the backbone tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = load_backbone()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_backbone_matches_the_library_definition(backbone):
    efficientnet = pytest.importorskip("efficientnet_lite_pytorch")
    lib = efficientnet.EfficientNet.from_name("efficientnet-lite0")
    lib.load_state_dict(backbone.state_dict())  # the same keys, strictly
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), lib.eval()(x), rtol=1e-4, atol=1e-4)


def test_patch_features_are_deterministic_and_shaped(backbone):
    x = surfaces(2)
    with torch.no_grad():
        a, b = backbone.patch_features(x), backbone.patch_features(x)
    assert a.shape == (2, FEATURE_CHANNELS, SIZE // 8, SIZE // 8)
    assert torch.equal(a, b)


def test_novelty_is_near_zero_on_a_training_image_and_high_on_a_blob(backbone):
    train = surfaces(4)
    prior = fit_prior([train[:2], train[2:]], size=SIZE, coreset=10_000, backbone=backbone)  # keeps every patch
    maps = prior(torch.stack([train[0], with_blob(train[0])]))  # (2, SIZE, SIZE)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    seen, blob = maps[0].max().item(), maps[1, SIZE // 2, SIZE // 2].item()
    assert seen < 0.01 * blob  # ~0 against itself (fp16 bank rounding only)
    assert maps[1, SIZE // 2, SIZE // 2] > maps[1, 2, 2]  # hotter on the blob than in a far corner


def test_map_takes_the_input_size(backbone):
    prior = fit_prior([surfaces(2)], size=SIZE, coreset=32, backbone=backbone)
    assert prior(torch.rand(1, 3, 48, 80)).shape == (1, 48, 80)


def test_backbone_stays_in_eval_mode_when_the_prior_is_set_to_train(backbone):
    prior = fit_prior([surfaces(2)], size=SIZE, coreset=32, backbone=backbone)
    x = with_blob(surfaces(1, seed=1)[0])[None]
    before = prior(x)
    prior.train()
    assert not prior.backbone.training
    assert torch.equal(prior(x), before)


def test_bank_state_round_trip_with_weights_only(backbone):
    prior = fit_prior([surfaces(3)], size=SIZE, coreset=50, backbone=backbone)
    buf = io.BytesIO()
    torch.save(prior.bank_state(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == {"bank", "size"} and state["bank"].dtype == torch.float16
    again = FeaturePrior.from_bank_state(state, backbone)
    x = with_blob(surfaces(1, seed=1)[0])[None]
    assert torch.equal(prior(x), again(x))


def test_coreset_size_is_honoured(backbone):
    prior = fit_prior([surfaces(3)], size=SIZE, coreset=20, backbone=backbone)
    assert prior.bank.shape == (20, FEATURE_CHANNELS)
    feats = torch.randn(5 * 16, 8, generator=torch.Generator().manual_seed(0))
    picked = greedy_coreset(feats, 10, per_image=16)
    assert picked.shape == (10,) and picked.unique().numel() == 10
    assert torch.equal(greedy_coreset(feats, 500, per_image=16), torch.arange(80))
    assert torch.equal(greedy_coreset(feats, 10, per_image=16), picked)  # seeded


def test_greedy_coreset_picks_the_farthest_point():
    feats = torch.tensor([[0.0], [1.0], [10.0], [2.0]])
    assert greedy_coreset(feats, 2, per_image=4).tolist() == [0, 2]


def test_nearest_distance_matches_cdist():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(37, 6, generator=g), torch.randn(11, 6, generator=g)
    torch.testing.assert_close(nearest_distance(q, bank, chunk=8), torch.cdist(q, bank).amin(1), rtol=1e-4,
                               atol=1e-4)


def test_size_must_be_a_multiple_of_16(backbone):
    with pytest.raises(ValueError, match="multiple of 16"):
        FeaturePrior(torch.zeros(1, FEATURE_CHANNELS), size=100, backbone=backbone)


@pytest.mark.filterwarnings("ignore")  # the tracer's notes on a fixed-size export
def test_onnx_export_matches(backbone):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    prior = fit_prior([surfaces(2)], size=SIZE, coreset=32, backbone=backbone)
    x = with_blob(surfaces(1, seed=1)[0])[None]
    buf = io.BytesIO()
    torch.onnx.export(prior, (x,), buf, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buf.getvalue())
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), prior(x), rtol=1e-3, atol=1e-3)


def test_tail_evidence_is_monotone_and_keeps_order_past_the_maximum():
    values = torch.rand(20_000, generator=torch.Generator().manual_seed(0)) ** 3
    tail = TailEvidence.fit(values)
    x = torch.linspace(-1, 3, 4001)
    e = tail(x)
    assert (e[1:] >= e[:-1]).all() and e.min() >= 0
    beyond = e[x > values.max()]
    assert (beyond[1:] > beyond[:-1]).all()  # no ties past the good pixels' maximum
    # inside the table: about -log of the share of good values above x
    q = float(values.quantile(0.99))
    assert abs(float(tail(torch.tensor(q))) - torch.log(torch.tensor(100.0))) < 0.2


def test_tail_evidence_of_a_constant_map_is_a_step():
    tail = TailEvidence.fit(torch.full((100,), 0.5))
    e = tail(torch.tensor([0.0, 0.5, 0.6]))
    assert e[0] == 0 and e[2] > e[1]


def test_fused_map_is_in_unit_interval_and_draem_below_the_gate_adds_nothing():
    nov = torch.tensor([0.0, 1.0, 5.0])
    below = torch.full((3,), math.log(1 / GATE_FRACTION) - 0.1)
    assert torch.allclose(fuse(nov, below), nov / (nov + math.log(1000)))
    above = fuse(nov, torch.full((3,), 20.0))
    assert (above > fuse(nov, below)).all() and above.max() < 1 and above.min() >= 0
    strong = fuse(torch.tensor([40.0, 60.0]), torch.zeros(2))
    assert strong[1] > strong[0]  # strong defects keep their order (no float32 ties at 1)


def test_prior_fusion_round_trip_with_weights_only(backbone):
    prior = fit_prior([surfaces(3)], size=SIZE, coreset=50, backbone=backbone)
    held = prior(surfaces(2, seed=1))
    fusion = PriorFusion(prior, TailEvidence.fit(held), TailEvidence.fit(torch.rand(1000)))
    buf = io.BytesIO()
    torch.save(fusion.state(), buf)
    buf.seek(0)
    again = PriorFusion.from_state(torch.load(buf, weights_only=True), backbone)
    x, d = with_blob(surfaces(1, seed=2)[0])[None], torch.rand(1, SIZE, SIZE)
    assert again.features.bank.shape == (50, FEATURE_CHANNELS)
    assert torch.equal(again(x, d), fusion(x, d))


def test_guided_sharpening_pulls_a_coarse_blob_onto_the_thin_line_under_it():
    """The novelty's blob (a stride-8 grid upsampled) over a 2-pixel dark line: sharpened along the grey image, the
    map is high on the line and low beside it; on flat surface it stays near the blob; any shape, down to 1 px."""
    image = torch.full((1, 3, 64, 64), 0.6)
    image[..., 31:33] = 0.2  # a vertical hairline
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    blob = 0.8 * torch.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / (2 * 8.0 ** 2))[None]  # (1, 64, 64)
    out = guided_sharpen(blob, image, 8)
    assert out.shape == blob.shape and 0 <= out.min() and out.max() <= 1
    rows = slice(26, 38)  # across the blob's middle: the map now steps up where the line begins, as the image does
    step, step_before = out[0, rows, 31] - out[0, rows, 30], blob[0, rows, 31] - blob[0, rows, 30]
    assert (step > 0.1).all() and (step_before.abs() < 0.02).all()
    assert set(out[0, rows].argmax(1).tolist()) <= {31, 32}  # its maximum on the line in every row
    far = torch.zeros(1, 64, 64)
    far[:, :8, :8] = 0.3  # a map patch on flat surface, away from any edge: smoothed, not moved onto the line
    assert guided_sharpen(far, image, 8)[0, :, 31:33].max() < 0.01
    for h, w in ((1, 40), (40, 1), (1, 1)):
        assert guided_sharpen(torch.rand(2, h, w), torch.rand(2, 3, h, w), 8).shape == (2, h, w)


def with_line(image, value=0.15):
    """A copy of (3, H, W) with a 1-pixel dark vertical line down its middle column."""
    out = image.clone()
    out[..., out.shape[-1] // 2] = value
    return out


def test_fine_evidence_is_high_on_a_hairline_and_low_on_good_surface(backbone):
    """The first block's Gaussian of good locations (stride 2): a 1-px line stands out where the stride-8 novelty
    grid would smear it, at the cap (1: as rare as the rarest good pixels); good surface stays well below it."""
    fine = FineEvidence.fit(backbone, surfaces(4))
    fine.scale = float(fine.distance(backbone, surfaces(2, seed=1)).quantile(0.999))
    m = fine(backbone, with_line(surfaces(1, seed=2)[0])[None])[0]  # (64, 64)
    assert m.shape == (SIZE, SIZE) and 0 <= m.min() and m.max() <= 1
    on, beside, far = m[8:56, 31:33].mean(), m[8:56, 27:29].mean(), m[8:56, 4:16].mean()
    assert on > 0.9 and far < 0.4 and beside < on - 0.5


def test_fine_evidence_reshapes_the_map_only_at_a_weight(backbone):
    """weight 0 (MTD's choice) leaves the map bit-identical; above 0 a coarse blob is pulled onto the line; state
    round-trips with weights_only, on its own and inside the pair's PriorFusion state."""
    fine = FineEvidence.fit(backbone, surfaces(4))
    fine.scale = float(fine.distance(backbone, surfaces(2, seed=1)).quantile(0.999))
    x = with_line(surfaces(1, seed=2)[0])[None]
    blob = torch.full((1, SIZE, SIZE), 0.6)
    assert torch.equal(fine.reshape(blob, fine(backbone, x), weight=0.0), blob)
    out = fine.reshape(blob, fine(backbone, x), weight=0.5)
    assert out[0, :, 31:33].mean() > out[0, :, 4:16].mean() + 0.1
    fine.weight = 0.5
    prior = fit_prior([surfaces(3)], size=SIZE, coreset=50, backbone=backbone)
    fusion = PriorFusion(prior, TailEvidence.fit(torch.rand(100)), TailEvidence.fit(torch.rand(100)), fine=fine)
    buf = io.BytesIO()
    torch.save(fusion.state(), buf)
    buf.seek(0)
    again = PriorFusion.from_state(torch.load(buf, weights_only=True), backbone)
    assert again.fine.weight == 0.5 and again.fine.scale == fine.scale and again.refines
    assert torch.equal(again.refine(blob, x), fusion.refine(blob, x))
    fusion.fine = None  # pairs before it: no "fine" in the state, the map as it was
    assert "fine" not in fusion.state() and torch.equal(fusion.refine(blob, x), blob)
