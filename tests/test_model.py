import pytest
import torch

from model import DRAEM, DiscriminativeSubNetwork, ReconstructiveSubNetwork
from model.model_unet import anomaly_map, image_score
from tests.conftest import shared_path


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_width_parameter_counts():
    assert n_params(ReconstructiveSubNetwork()) == 69_048_579
    assert n_params(DiscriminativeSubNetwork()) == 28_374_146


def test_loads_and_reproduces_authors_networks():
    fx = torch.load(shared_path("fixtures", "original_draem_small.pt"), weights_only=True)
    rec_net = ReconstructiveSubNetwork(3, 3, base_width=8)
    seg_net = DiscriminativeSubNetwork(6, 2, base_channels=4)
    rec_net.load_state_dict(fx["reconstructive_state_dict"], strict=True)
    seg_net.load_state_dict(fx["discriminative_state_dict"], strict=True)
    rec_net.eval(), seg_net.eval()
    with torch.no_grad():
        rec = rec_net(fx["input"])
        logits = seg_net(torch.cat((rec, fx["input"]), dim=1))
    assert (rec - fx["reconstruction"]).abs().max() <= 1e-5
    assert (logits - fx["segmentation_logits"]).abs().max() <= 1e-5


@pytest.mark.parametrize("hw", [(64, 96), (32, 32)])
def test_small_widths_shapes(hw):
    m = DRAEM(rec_base_width=4, seg_base_width=2).eval()
    rec, logits = m(torch.rand(2, 3, *hw))
    assert rec.shape == (2, 3, *hw) and logits.shape == (2, 2, *hw)


def test_size_not_multiple_of_32_is_a_clear_error():
    with pytest.raises(ValueError, match="multiples of 32"):
        DRAEM(4, 2)(torch.rand(1, 3, 48, 64))
    with pytest.raises(ValueError, match="multiples of 32"):
        DiscriminativeSubNetwork(6, 2, 2)(torch.rand(1, 6, 64, 80))


def test_anomaly_map_is_softmax_channel_one():
    logits = torch.tensor([[[[0.0]], [[0.0]]], [[[0.0]], [[100.0]]]])  # (2, 2, 1, 1)
    amap = anomaly_map(logits)
    assert amap.shape == (2, 1, 1)
    assert amap[0].item() == pytest.approx(0.5) and amap[1].item() == pytest.approx(1.0)


def test_image_score_is_max_of_21x21_mean():
    amap = torch.zeros(2, 64, 64)
    amap[0, 10, 10] = 1.0                # one hot pixel: diluted by the mean filter
    amap[1, 20:41, 20:41] = 1.0          # a 21x21 defect: full score at its centre
    s = image_score(amap)
    assert s[0].item() == pytest.approx(1 / 441)
    assert s[1].item() == pytest.approx(1.0)
    # Matches the authors' evaluation exactly (avg_pool2d with zero padding, count_include_pad).
    ref = torch.nn.functional.avg_pool2d(amap[:, None], 21, stride=1, padding=10).amax(dim=(1, 2, 3))
    assert torch.allclose(s, ref, atol=1e-6)


def test_image_score_top_fraction_is_the_mean_of_the_hottest_pixels():
    amap = torch.zeros(2, 10, 10)
    amap[0, 0, :5] = 1.0  # 5 hot pixels in a row: a thin defect
    amap[1] = torch.linspace(0, 1, 100).view(10, 10)
    s = image_score(amap, top_fraction=0.05)  # 5 of 100 pixels
    assert s[0].item() == pytest.approx(1.0)
    assert s[1].item() == pytest.approx(torch.linspace(0, 1, 100)[-5:].mean().item())
    assert image_score(amap, top_fraction=1e-9)[1].item() == pytest.approx(1.0)  # at least one pixel


def test_score_kernel_keeps_the_authors_share_of_the_image():
    from model.model_unet import score_kernel
    assert score_kernel(256) == 21 and score_kernel(128) == 11 and score_kernel(512) == 43
    assert score_kernel(32) == 3 and score_kernel(128, scaled=False) == 21


def test_focal_prior_init():
    m = DRAEM(4, 2).init_weights(anomaly_prior=0.01).eval()
    p = torch.softmax(m(torch.rand(1, 3, 32, 32))[1], dim=1)[:, 1]
    assert abs(p.mean().item() - 0.01) < 0.01
    bias = DRAEM(4, 2).init_weights().discriminative.decoder_segment.fin_out[0].bias
    assert bias[1] - bias[0] > -1  # paper: PyTorch's default bias, no prior (ours: -log 99 = -4.6)


def test_residual_reconstruction_starts_as_the_input_and_learns_a_correction():
    """recipe ours: the reconstructive network predicts the correction to its input, its last convolution starting
    at 0, so before any step the reconstruction is the input itself; the same weights and names as the authors'."""
    x = torch.rand(2, 3, 32, 32)
    m = DRAEM(4, 2, rec_residual=True).init_weights(anomaly_prior=0.01).eval()
    assert torch.equal(m.reconstructive(x), x)
    plain = DRAEM(4, 2)
    assert m.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        m.reconstructive.decoder.fin_out[0].bias.fill_(0.1)
    assert torch.allclose(m.reconstructive(x), x + 0.1)
    plain.load_state_dict(m.state_dict())  # the same weights read as an absolute reconstruction: not the input
    assert not torch.allclose(plain.reconstructive(x), x, atol=0.05)
