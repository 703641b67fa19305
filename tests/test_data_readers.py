"""Readers on generated files: natural order, gaps, corrupt, empty and missing sources, decord vs PyAV."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.data import readers
from common.data.readers import (FrameFolder, ImageFile, MissingFramesError, MissingSourceError, ReadError,
                                 VideoFile, compact_ranges, frame_number, open_sample)
from common.data.records import Interval, Sample


def flat_frame(value: int, size: int = 32) -> np.ndarray:
    """A frame whose grey level encodes its number, so a read can be checked after lossy coding."""
    return np.full((size, size, 3), value, np.uint8)


def write_folder(folder: Path, numbers, name="img{}.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        cv2.imwrite(str(folder / name.format(n)), flat_frame(10 * n))
    return folder


def grey_levels(frames: np.ndarray) -> list[int]:
    return [int(round(f.mean() / 10)) for f in frames]


def write_video(path: Path, count: int, codec: str = "mpeg4", keyframe_every: int = 5, fps: int = 25) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = keyframe_every
        for n in range(count):
            frame = av.VideoFrame.from_ndarray(flat_frame(6 * n), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---------------------------------------------------------------- frame folders


def test_folder_natural_order_and_frame_numbers(tmp_path):
    folder = write_folder(tmp_path / "clip", [10, 2, 1, 9])
    reader = FrameFolder(folder)
    assert reader.numbers.tolist() == [1, 2, 9, 10]  # not the string order 1, 10, 2, 9
    assert grey_levels(reader.read([0, 3, 1])) == [1, 10, 2]
    assert grey_levels(reader.read_numbers([9, 1])) == [9, 1]


@pytest.mark.parametrize("name, number", [("img46.jpg", 46), ("reg_img46.jpg", 46), ("006_05562.jpg", 5562),
                                          ("image000123.bmp", 123), ("175.jpg", 175)])
def test_frame_number_is_the_last_number_in_the_name(name, number):
    assert frame_number(name) == number


def test_folder_gaps_are_reported_and_named(tmp_path):
    folder = write_folder(tmp_path / "gappy", [3, 4, 5, 8, 9, 12])
    reader = FrameFolder(folder)
    assert reader.gaps == [6, 7, 10, 11]
    assert "6-7, 10-11" in reader.describe_gaps()
    with pytest.raises(MissingFramesError, match=r"gappy.*7"):
        reader.read_numbers([5, 7])
    assert grey_levels(reader.read_numbers([6, 7, 11], missing="nearest")) == [5, 8, 12]


def test_folder_read_by_time_needs_fps(tmp_path):
    folder = write_folder(tmp_path / "timed", range(1, 11))
    with pytest.raises(ReadError, match="frame rate unknown"):
        FrameFolder(folder).read_times([0.0])
    assert grey_levels(FrameFolder(folder, fps=10).read_times([0.0, 0.5])) == [1, 6]


def damaged_folder(tmp_path):
    folder = write_folder(tmp_path / "bad", [1, 2, 3, 4, 5])
    (folder / "img2.jpg").write_bytes(b"not a jpeg at all" * 10)
    textured = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    good = cv2.imencode(".jpg", textured)[1].tobytes()
    (folder / "img3.jpg").write_bytes(good[: len(good) * 4 // 5])  # older OpenCV decodes this half grey
    (folder / "img5.jpg").write_bytes(b"")
    return folder


def test_corrupt_and_truncated_jpeg_name_the_file_when_asked_to_fail(tmp_path):
    reader = FrameFolder(damaged_folder(tmp_path), damaged="error")
    with pytest.raises(ReadError, match=r"img2\.jpg.*cannot decode"):
        reader.read([1])
    with pytest.raises(ReadError, match=r"img3\.jpg.*(truncated|cannot decode)"):
        reader.read([2])
    assert grey_levels(reader.read([0])) == [1]


@pytest.mark.filterwarnings("ignore::common.data.readers.DamagedFrameWarning")
def test_damaged_frames_are_replaced_by_the_nearest_readable_one(tmp_path):
    reader = FrameFolder(damaged_folder(tmp_path))
    with pytest.warns(readers.DamagedFrameWarning, match=r"img2\.jpg: cannot be decoded; frame 1 stands in"):
        frames = reader.read_numbers([1, 2, 3, 4, 5])
    # 2 -> 1 (1 and 3 are as near; 3 is damaged too); 3 -> 4 (2 is damaged); 5 -> 4
    assert grey_levels(frames) == [1, 1, 4, 4, 4]
    assert reader.stand_ins == {2: 1, 3: 4, 5: 4}
    assert [readers.looks_readable(f) for f in reader.files] == [True, False, False, True, False]
    for number in (1, 2, 3, 4, 5):
        (reader.path / f"img{number}.jpg").write_bytes(b"")
    with pytest.raises(ReadError, match=r"bad: no frame of the folder can be decoded"):
        FrameFolder(reader.path).read([0])


def test_empty_missing_and_ambiguous_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    with pytest.raises(ReadError, match=r"empty: no image frames"):
        FrameFolder(tmp_path / "empty")
    with pytest.raises(MissingSourceError, match="nowhere"):
        FrameFolder(tmp_path / "nowhere")
    twice = write_folder(tmp_path / "twice", [1])
    cv2.imwrite(str(twice / "img01.jpg"), flat_frame(5))
    with pytest.raises(ReadError, match="frame number 1 appears twice"):
        FrameFolder(twice)
    cv2.imwrite(str(write_folder(tmp_path / "unnumbered", [1]) / "cover.jpg"), flat_frame(5))
    with pytest.raises(ReadError, match=r"cover\.jpg.*no frame number"):
        FrameFolder(tmp_path / "unnumbered")


def test_out_of_range_positions_name_the_source(tmp_path):
    reader = FrameFolder(write_folder(tmp_path / "short", [1, 2]))
    with pytest.raises(IndexError, match="short"):
        reader.read([2])


# ---------------------------------------------------------------- images


def test_single_image_gray_bmp_becomes_rgb(tmp_path):
    path = tmp_path / "face.bmp"
    cv2.imwrite(str(path), np.full((20, 30), 77, np.uint8))
    image = ImageFile(path)
    assert image.numbers.tolist() == [0]
    frames = image.read([0, 0])
    assert frames.shape == (2, 20, 30, 3) and frames.dtype == np.uint8 and int(frames.mean()) == 77


def test_missing_and_empty_image(tmp_path):
    with pytest.raises(MissingSourceError, match="absent.jpg"):
        ImageFile(tmp_path / "absent.jpg")
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(ReadError, match="zero.jpg: image file is empty"):
        ImageFile(tmp_path / "zero.jpg").read([0])


# ---------------------------------------------------------------- videos


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_random_access_by_index_and_time(tmp_path, backend):
    path = write_video(tmp_path / "clip.mp4", 40)
    video = VideoFile(path, backend=backend)
    assert len(video) == 40 and video.fps == pytest.approx(25)
    wanted = [37, 3, 20, 21, 3]
    levels = [int(round(f.mean() / 6)) for f in video.read(wanted)]
    assert levels == wanted
    by_time = [int(round(f.mean() / 6)) for f in video.read_times([0.0, 1.0])]
    assert by_time == [0, 25]
    video.close()


def test_decord_and_pyav_agree(tmp_path):
    path = write_video(tmp_path / "clip.mp4", 30)
    a = VideoFile(path, backend="decord").read([0, 11, 29])
    b = VideoFile(path, backend="pyav").read([0, 11, 29])
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 2


def test_pyav_takes_over_where_decord_cannot_open(tmp_path, monkeypatch):
    class Refusing:
        def __init__(self, path):
            raise RuntimeError("decord cannot open this container")

    monkeypatch.setattr(readers, "_DecordVideo", Refusing)
    video = VideoFile(write_video(tmp_path / "clip.mp4", 12))
    assert video.backend == "pyav"
    assert [int(round(f.mean() / 6)) for f in video.read([11, 4])] == [11, 4]


def test_mjpeg_avi_reads(tmp_path):
    path = tmp_path / "disfa.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (32, 32))
    for n in range(6):
        writer.write(flat_frame(20 * n))
    writer.release()
    video = VideoFile(path)
    assert len(video) == 6
    assert [int(round(f.mean() / 20)) for f in video.read([5, 0])] == [5, 0]


def test_broken_videos_name_the_file(tmp_path):
    with pytest.raises(MissingSourceError, match="gone.mp4"):
        VideoFile(tmp_path / "gone.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ReadError, match="empty.mp4: video file is empty"):
        VideoFile(tmp_path / "empty.mp4")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ReadError, match="noise.mp4: cannot open video"):
        VideoFile(tmp_path / "noise.mp4")


# ---------------------------------------------------------------- by sample


def test_open_sample_uses_kind_path_and_fps(tmp_path):
    folder = write_folder(tmp_path / "EP01", [5, 6, 7])
    sample = Sample("toy", "sub01", "frames", folder, Interval(5, 6, 7), extra={"fps": 200})
    reader = open_sample(sample)
    assert isinstance(reader, FrameFolder) and reader.fps == 200
    with pytest.raises(ValueError, match="unknown source kind 'hologram'"):
        open_sample(Sample("toy", "sub01", "hologram", folder))


def test_compact_ranges():
    assert compact_ranges([9, 3, 4, 5, 11, 12]) == "3-5, 9, 11-12"


def test_pyav_takes_over_where_decord_opens_but_cannot_decode(tmp_path):
    path = tmp_path / "w48.avi"  # decord 0.6 fails to copy out frames 48 px wide
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (48, 48))
    for n in range(4):
        writer.write(flat_frame(40 * n, size=48))
    writer.release()
    video = VideoFile(path)
    assert [int(round(f.mean() / 40)) for f in video.read([3, 1])] == [3, 1]
    assert video.backend in ("decord", "pyav")  # pyav where this decord build fails, decord where it does not
