"""Tests for utils/outputs/picture.py: the 4-panel figure, its rendering and the atomic PNG write."""
import cv2
import numpy as np
import pytest

from utils.outputs.picture import PANEL_TITLES, _build_figure, render_panels, save_panels
from utils.storage.atomic import atomic_write_bytes


@pytest.fixture
def inputs():
    rng = np.random.default_rng(0)
    image = rng.random((32, 32, 3), dtype=np.float32)  # (H, W, 3) in [0, 1]
    reconstruction = np.clip(image + 0.05 * rng.standard_normal(image.shape), 0, 1)
    yy, xx = np.mgrid[:32, :32]
    anomaly_map = np.exp(-((yy - 16) ** 2 + (xx - 10) ** 2) / 30.0)  # (H, W) blob, peak 1
    return image, reconstruction, anomaly_map


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_figure_has_the_four_titled_panels_and_a_colour_bar(inputs):
    fig = _build_figure(*inputs, score=0.873, threshold=0.412, title="sample.png")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == list(PANEL_TITLES)
    assert titles == ["Input (original)", "Reconstructed", "Anomaly Map (raw)", "Result (overlay)"]
    assert len(fig.axes) == 5  # 4 panels + the colour bar of the raw map
    raw = fig.axes[2].images[0]
    assert raw.get_cmap().name == "jet" and raw.get_clim() == (0.0, 1.0)
    assert fig.get_suptitle() == "sample.png"
    assert all(len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0 for ax in fig.axes[:4])


@pytest.mark.parametrize(
    "score, threshold, verdict, has_contour",
    [
        (0.873, None, "no calibrated threshold", False),
        (0.873, 0.412, "NG  (thr 0.412)", True),
        (0.2, 0.412, "OK  (thr 0.412)", True),
    ],
)
def test_score_verdict_and_contour(inputs, score, threshold, verdict, has_contour):
    fig = _build_figure(*inputs, score=score, threshold=threshold)
    result = fig.axes[3]
    assert f"score {score:.3f}" in _texts(fig)
    assert verdict in _texts(fig)
    colour = {None: "#bbbbbb", "NG": "#ff4136", "OK": "#2ecc40"}[verdict[:2] if threshold else None]
    assert [t.get_color() for t in result.texts if t.get_text() == verdict] == [colour]
    assert bool(result.collections) == has_contour


def test_contour_level_outside_map_range_draws_nothing(inputs):
    fig = _build_figure(*inputs, score=0.9, threshold=0.5, contour_level=2.0)
    assert not fig.axes[3].collections


def test_render_panels_shape_and_dtype(inputs):
    rgb = render_panels(*inputs, score=0.5)
    h, w, c = rgb.shape
    assert c == 3 and rgb.dtype == np.uint8
    assert 3.0 <= w / h <= 4.0
    assert rgb.std() > 10  # not a blank canvas


def test_render_panels_accepts_grayscale_uint8(inputs):
    image = (inputs[0][..., 0] * 255).astype(np.uint8)  # (H, W) uint8
    assert render_panels(image, image, inputs[2], score=0.1, threshold=0.3).shape[2] == 3


def test_render_panels_rejects_mismatched_map(inputs):
    with pytest.raises(ValueError):
        render_panels(inputs[0], inputs[1], np.zeros((16, 16)), score=0.1)


@pytest.mark.parametrize("threshold", [None, 0.412])
def test_save_panels_writes_readable_png_and_no_temp_files(tmp_path, inputs, threshold):
    path = tmp_path / "out" / "nested" / "panel.png"
    save_panels(path, *inputs, score=0.873, threshold=threshold, title="t")
    read = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert read is not None
    np.testing.assert_array_equal(read[..., ::-1], render_panels(*inputs, score=0.873, threshold=threshold,
                                                                 title="t"))
    assert [p.name for p in path.parent.iterdir()] == ["panel.png"]


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails mid-write
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("shape,grid", [((256, 256), (1, 4)), ((1024, 256), (1, 4)), ((460, 1130), (2, 2)),
                                        ((160, 640), (4, 1)), ((256, 2048), (4, 1))])
def test_layout_follows_the_aspect_ratio(shape, grid):
    from utils.outputs.picture import panel_grid
    assert panel_grid(*shape) == grid
    h, w = shape
    fig = _build_figure(np.full((h, w, 3), 0.5), np.full((h, w, 3), 0.5), np.zeros((h, w)), score=0.1)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.images[0].get_array().shape[:2] for ax in panels] == [shape] * 4  # whole image, not cropped
    fig.canvas.draw()
    for ax in panels:  # each panel drawn at the image's own aspect ratio
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(w / h, rel=0.03)


def test_large_map_is_reduced_by_block_maximum_so_a_thin_defect_stays():
    h, w = 2000, 8000
    amap = np.zeros((h, w), np.float32)
    amap[700:702, 1000:5000] = 0.9  # a 2-pixel line
    fig = _build_figure(np.zeros((h, w, 3), np.uint8), np.zeros((h, w, 3), np.uint8), amap, score=0.9)
    shown = fig.axes[2].images[0].get_array()
    assert max(shown.shape) < w and shown.max() == pytest.approx(0.9)


def test_panels_at_the_image_s_own_pixels():
    """A working scale smaller than the file: the map and the reconstruction are resized to the file's pixels, so
    the outline lies on the defect as the file shows it; at the image's own scale nothing changes."""
    from utils.outputs.picture import at_image_pixels
    original = np.zeros((256, 1024, 3), np.float32)
    amap = np.zeros((160, 640), np.float32)
    amap[80, 100:540] = 1.0  # a one-pixel line at the working scale
    image, rec, big = at_image_pixels(original, np.zeros((160, 640, 3), np.float32), amap)
    assert image is original and rec.shape == (256, 1024, 3) and big.shape == (256, 1024)
    rows = np.nonzero(big.max(axis=1) > 0.5)[0]
    assert 125 <= rows.min() and rows.max() <= 131  # row 80 of 160 is row 128 of 256
    same = at_image_pixels(original, np.zeros((256, 1024, 3)), np.zeros((256, 1024)))
    assert same[2].shape == (256, 1024) and same[0] is original


def test_the_colour_bar_says_what_its_values_mean_and_where_the_threshold_is(inputs):
    fig = _build_figure(*inputs, score=0.2, threshold=0.6, scale_note="0.5: as rare as the rarest 0.1% of good pixels",
                        reconstruction_note="not learnt yet: R² -106 on held-out good images")
    bar = fig.axes[4]
    assert bar.get_ylabel() == "0.5: as rare as the rarest 0.1% of good pixels"
    assert [t.get_text() for t in bar.texts] == ["thr"] and any(list(line.get_ydata()) == [0.6, 0.6]
                                                                for line in bar.lines)
    assert fig.axes[1].get_title() == "Reconstructed\n(not learnt yet: R² -106 on held-out good images)"
    plain = _build_figure(*inputs, score=0.2, threshold=None)
    assert plain.axes[4].get_ylabel() == "" and not plain.axes[4].texts  # no threshold: nothing marked
