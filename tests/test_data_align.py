"""Alignment: landmarks land on the template within a pixel; one transform per clip; detectors plug in."""
import cv2
import numpy as np
import pytest

from common.data.align import (AlignSettings, CascadeDetector, DlibDetector, FaceAligner, NoFaceError,
                               alignment_matrix, box_points, dlib_available, five_points, load_detector, resize_matrix,
                               similarity_matrix, template, transform_points, warp)
from common.synth import render_face


def similar_points(size: int, angle_deg: float, scale: float, shift) -> np.ndarray:
    """The 112 template moved by a known similarity: what a detector would report on a tilted face."""
    theta = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return template(112) @ rotation.T + np.asarray(shift)


def dots_image(points: np.ndarray, shape=(240, 320)) -> np.ndarray:
    """Five bright dots on black at sub-pixel positions (drawn with 4 bits of sub-pixel precision)."""
    image = np.zeros((*shape, 3), np.uint8)
    for x, y in points:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 3 * 16, (255, 255, 255), -1,
                   lineType=cv2.LINE_AA, shift=4)
    return image


def dot_centres(image: np.ndarray) -> np.ndarray:
    gray = image[..., 0].astype(np.float64)
    count, labels = cv2.connectedComponents((gray > 20).astype(np.uint8))
    centres = []
    for label in range(1, count):
        ys, xs = np.nonzero(labels == label)
        weights = gray[ys, xs]
        centres.append([np.average(xs, weights=weights), np.average(ys, weights=weights)])
    return np.array(centres)


@pytest.mark.parametrize("size", [112, 224, 256])
def test_template_scales_with_size_and_margin(size):
    assert np.allclose(template(size), template(112) * size / 112)
    wider = template(size, margin=0.25)
    centre = np.array([size / 2, size / 2])
    assert np.allclose(wider - centre, (template(size) - centre) / 1.5)


@pytest.mark.parametrize("size, margin", [(112, 0.0), (224, 0.15), (256, 0.3)])
def test_landmarks_map_onto_template(size, margin):
    points = similar_points(size, angle_deg=17, scale=1.3, shift=(40, 25))
    mapped = transform_points(points, alignment_matrix(points, size, margin))
    assert np.abs(mapped - template(size, margin)).max() < 1e-6


@pytest.mark.parametrize("size", [112, 224, 256])
def test_warped_image_puts_the_landmarks_on_the_template_within_a_pixel(size):
    points = similar_points(size, angle_deg=-12, scale=1.6, shift=(70, 30))
    aligner = FaceAligner(AlignSettings(size=size, margin=0.1))
    alignment = aligner.choose({"landmarks": points}, 1, None, "dots")  # dataset points: no frame is read
    found = dot_centres(aligner.apply(dots_image(points)[None], alignment)[0])
    target = template(size, 0.1)
    nearest = np.array([np.linalg.norm(target - c, axis=1).min() for c in found])
    assert len(found) == 5 and nearest.max() < 1.0


def test_similarity_has_no_reflection_and_is_least_squares():
    src = np.array([[0, 0], [1, 0], [0, 1]], float)
    matrix = similarity_matrix(src, src[:, ::-1])  # a mirror image cannot be reached
    assert np.linalg.det(matrix[:, :2]) > 0


def test_alignment_removes_roll_scale_and_shift_of_a_generated_face():
    _, upright = render_face({12: 0.8}, subject=4, size=224, seed=3, pose=(0, 1, 0, 0, 0), return_landmarks=True)
    _, tilted = render_face({12: 0.8}, subject=4, size=224, seed=3, pose=(9, 0.9, 0, 0.03, -0.02),
                            return_landmarks=True)
    a = transform_points(upright, alignment_matrix(upright, 224, 0.1))
    b = transform_points(tilted, alignment_matrix(tilted, 224, 0.1))
    assert np.abs(a - b).max() < 1.0


def test_five_points_from_68():
    landmarks = np.zeros((68, 2))
    landmarks[36:42] = [10, 20]
    landmarks[42:48] = [30, 20]
    landmarks[30] = [20, 30]
    landmarks[48], landmarks[54] = [12, 40], [28, 40]
    assert five_points(landmarks).tolist() == [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]]
    with pytest.raises(ValueError, match="5 or 68 points, got 7"):
        five_points(np.zeros((7, 2)))


def test_cascade_finds_generated_face_near_its_landmarks():
    image, points = render_face({}, subject=2, size=224, seed=1, return_landmarks=True)
    found = CascadeDetector()(image)
    assert found is not None
    assert np.abs(found - points).max() < 224 * 0.08


def jittery_detector():
    """A plug-in detector whose points wander by a pixel or two from frame to frame, as real ones do."""
    cascade, rng = CascadeDetector(), np.random.default_rng(0)
    return lambda image: cascade(image) + rng.normal(0, 1.5, (5, 2))


@pytest.mark.parametrize("mode", ["first", "median"])
def test_clip_gets_one_transform_even_with_a_jittery_detector(mode):
    frame = render_face({}, subject=1, size=96, seed=0)
    clip = np.repeat(frame[None], 6, axis=0)
    aligner = FaceAligner(AlignSettings(size=64, mode=mode, detector=f"{__name__}:jittery_detector"))
    alignment = aligner.choose({}, len(clip), lambda p: clip[p], "clip")
    out = aligner.apply(clip, alignment)
    assert alignment.source == "detector"
    assert np.array_equal(out, np.repeat(out[:1], len(out), axis=0))  # a still face stays still


def test_point_sources_in_order_dataset_box_detector_centre():
    frame = render_face({}, subject=1, size=96, seed=0)
    read = lambda p: frame[None].repeat(len(p), 0)  # noqa: E731
    aligner = FaceAligner(AlignSettings(size=64))
    given = similar_points(64, 0, 0.8, (5, 5))
    assert aligner.choose({"landmarks": given}, 1, read, "x").source == "dataset"
    assert aligner.choose({"face_box": (10, 10, 60, 60)}, 1, read, "x").source == "dataset"
    assert aligner.choose({}, 1, read, "x").source == "detector"
    blank = lambda p: np.zeros((len(p), 96, 96, 3), np.uint8)  # noqa: E731
    assert aligner.choose({}, 1, blank, "x").source == "center"
    with pytest.raises(NoFaceError, match="blank.jpg: no face found"):
        FaceAligner(AlignSettings(size=64, fallback="error")).choose({}, 1, blank, "blank.jpg")


def test_detector_none_resizes_the_centre_square():
    frame = np.zeros((60, 100, 3), np.uint8)
    frame[:, 20:80] = 200  # the centre 60x60 square
    aligner = FaceAligner(AlignSettings(size=30, detector="none"))
    alignment = aligner.choose({}, 1, lambda p: frame[None], "crop")
    assert alignment.source == "resize"
    assert aligner.apply(frame[None], alignment).min() == 200


def make_detector():
    """A plug-in detector factory, loaded by name below as a user's would be."""
    return lambda image: similar_points(image.shape[0], 0, 0.5, (10, 10))


def test_plug_in_detector_by_module_path():
    detector = load_detector(f"{__name__}:make_detector")
    assert detector(np.zeros((64, 64, 3), np.uint8)).shape == (5, 2)
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_detector("no_such_module_here:factory")
    with pytest.raises(ValueError, match="module:factory"):
        load_detector("mtcnn")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="align mode"):
        AlignSettings(mode="mean")
    with pytest.raises(ValueError, match="margin"):
        AlignSettings(margin=-0.1)


# ---------------------------------------------------------------- image quality


def textured_photo(size: int) -> np.ndarray:
    from skimage import data

    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)


def test_upscaling_a_small_crop_matches_a_plain_resize_to_the_last_pixel():
    small = textured_photo(100)  # RAF-DB's aligned faces are 100 px
    aligner = FaceAligner(AlignSettings(size=224, detector="none"))
    out = aligner.apply(small[None], aligner.choose({}, 1, lambda p: small[None], "x"))[0].astype(float)
    plain = cv2.resize(small, (224, 224), interpolation=cv2.INTER_LINEAR).astype(float)
    assert np.abs(out - plain).max() <= 1
    assert abs(out[-1].mean() - plain[-1].mean()) < 1 and abs(out[:, -1].mean() - plain[:, -1].mean()) < 1


def test_shrinking_through_an_alignment_is_anti_aliased():
    photo = textured_photo(512)
    spin = np.vstack([cv2.getRotationMatrix2D((111.5, 111.5), 0.01, 1.0), [0, 0, 1]])
    matrix = spin[:2] @ np.vstack([resize_matrix(512, 512, 224), [0, 0, 1]])  # a hair off axis: the general path
    area = cv2.resize(photo, (224, 224), interpolation=cv2.INTER_AREA).astype(float)
    ours = np.abs(warp(photo, matrix, 224).astype(float) - area).mean()
    bilinear_only = np.abs(cv2.warpAffine(photo, matrix, (224, 224)).astype(float) - area).mean()
    assert ours < 0.5 * bilinear_only and ours < 3


def test_a_crop_leaving_the_frame_repeats_edge_pixels_instead_of_black():
    bright = np.full((80, 80, 3), 200, np.uint8)
    matrix = alignment_matrix(box_points((-20, -20, 80, 80)), 64, 0.2)  # a face box partly off the frame
    out = warp(bright, matrix, 64)
    assert out.min() == 200


def test_plain_resize_of_a_same_size_crop_is_the_identity():
    photo = textured_photo(64)
    assert np.array_equal(warp(photo, resize_matrix(64, 64, 64), 64), photo)


# ---------------------------------------------------------------- dlib landmarks


def eye_angle(points5: np.ndarray) -> float:
    (lx, ly), (rx, ry) = points5[0], points5[1]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def rotated(image: np.ndarray, degrees: float) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0), (w, h),
                          borderMode=cv2.BORDER_REPLICATE)


def test_dlib_finds_the_face_in_a_real_photograph_and_alignment_levels_the_eyes():
    detector = DlibDetector()
    photo = rotated(textured_photo(512), 15)  # head roll the cascade cannot see
    points = detector(photo)
    assert points is not None and abs(abs(eye_angle(points)) - 15) < 5
    aligned = {name: FaceAligner(AlignSettings(size=224, detector=name)) for name in ("dlib", "cascade")}
    angles = {}
    for name, aligner in aligned.items():
        crop = aligner.apply(photo[None], aligner.choose({}, 1, lambda p: photo[None], "astronaut"))[0]
        again = detector(crop)
        assert again is not None, f"no face in the {name}-aligned crop"
        angles[name] = abs(eye_angle(again))
    assert angles["dlib"] < 3, angles
    assert angles["cascade"] > 10, angles  # the box-only detector leaves the roll in


def test_dlib_finds_every_synthetic_face():
    from common.synth import emotion_sample

    detector = DlibDetector()
    faces = [emotion_sample(subject=s, label=s % 7, seed=s, size=224)[0] for s in range(8)]
    assert all(detector(face) is not None for face in faces)


def test_auto_detector_is_recorded_as_the_one_used():
    assert AlignSettings(detector="auto").detector == ("dlib" if dlib_available() else "cascade")
    assert AlignSettings(detector="auto").to_dict()["detector"] != "auto"
