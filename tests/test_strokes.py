import numpy as np
import pytest

from utils.synthesis import strokes


@pytest.mark.parametrize("angle", [0.0, 0.3, np.pi / 4, 1.2])
@pytest.mark.parametrize("thickness", [1.0, 1.5, 2.0])
def test_alpha_is_the_covered_area_whatever_the_direction(angle, thickness):
    length = 100.0
    line = np.array([[20.0, 20.0], [20 + length * np.cos(angle), 20 + length * np.sin(angle)]]) + 0.3
    alpha = strokes.draw_polylines((140, 140), [line], thickness)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    assert alpha.sum() == pytest.approx(length * thickness, rel=0.1)  # band area, round caps aside
    assert not alpha[:10].any() and not alpha[:, :10].any()  # nothing far from the line


def test_place_keeps_every_point_on_allowed_pixels_or_gives_up():
    rng = np.random.default_rng(0)
    allowed = np.zeros((60, 200), bool)
    allowed[10:50, 10:190] = True
    placed = (strokes.place(rng, strokes.crack_lines(rng, length=80, branches=2), allowed) for _ in range(20))
    lines = next(p for p in placed if p is not None)  # one crack in a few runs along the band and fits
    assert len(lines) == 3
    q = np.round(strokes._dense(lines)).astype(int)
    assert allowed[q[:, 1], q[:, 0]].all()
    vertical = [np.array([[0.0, 0.0], [0.0, 45.0]])]  # taller than the allowed band: never fits
    assert strokes.place(rng, vertical, allowed) is None


def test_crack_lines_have_the_asked_length_and_branches():
    rng = np.random.default_rng(1)
    main, *branches = strokes.crack_lines(rng, length=120, branches=3, step=4.0)
    assert len(branches) == 3
    assert np.hypot(*np.diff(main, axis=0).T).sum() == pytest.approx(120, abs=4)
    assert all(np.hypot(*np.diff(b, axis=0).T).sum() < 120 for b in branches)


def test_same_generator_same_strokes():
    a = strokes.crack_lines(np.random.default_rng(5), 60, 1)
    b = strokes.crack_lines(np.random.default_rng(5), 60, 1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = strokes.curve(np.random.default_rng(5), 90)
    assert c.shape == (64, 2) and np.hypot(*(c[-1] - c[0])) == pytest.approx(90)
