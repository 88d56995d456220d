"""Image-folder and list-file datasets, CelebA files, ArcFace alignment, batch transforms, `facekd pack`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from facekd.cli import main
from facekd.data import RecordIODataset, load_pairs_bin
from facekd.data.align import ARCFACE_DST, align_face, landmarks_68_to_5, similarity_matrix, template_for
from facekd.data.celeba import (
    read_attributes,
    read_identities,
    read_landmarks,
    write_attributes,
    write_identities,
    write_landmarks,
)
from facekd.data.folders import ImageFolderDataset, ListFileDataset
from facekd.data.training import TrainSamples
from facekd.data.transforms import normalize, random_flip, resize, to_chw_tensor
from facekd.errors import DataError


def gradient(height: int, width: int, offset: int = 0) -> np.ndarray:
    """A smooth RGB image, so JPEG round trips stay within a few grey levels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x + offset) % 256, (y * 2) % 256, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def save(image: np.ndarray, path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))


# --- folders -----------------------------------------------------------------------------------------


def test_image_folder_sorts_identities(tmp_path):
    save(gradient(8, 8, 0), tmp_path / "bob" / "1.jpg")
    save(gradient(8, 8, 50), tmp_path / "alice" / "b.png", "PNG")
    save(gradient(8, 8, 90), tmp_path / "alice" / "a.jpg")
    (tmp_path / "alice" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert ds.class_names == ["alice", "bob"] and ds.num_classes == 2
    assert ds.labels.tolist() == [0, 0, 1] and ds.labels.dtype == np.int64
    image, label = ds[1]
    assert label == 0 and np.array_equal(image, gradient(8, 8, 50))  # the PNG is lossless
    assert np.abs(ds[2][0].astype(int) - gradient(8, 8, 0)).mean() < 3


def test_list_file_dataset(tmp_path):
    save(gradient(8, 8), tmp_path / "imgs" / "x y.png", "PNG")
    (tmp_path / "list.txt").write_text("imgs/x y.png 3\n\nimgs/missing.jpg 1\n")
    ds = ListFileDataset(tmp_path / "list.txt")
    assert ds.labels.tolist() == [3, 1] and ds.num_classes == 4
    assert np.array_equal(ds[0][0], gradient(8, 8)) and ds[0][1] == 3
    with pytest.raises(DataError, match=r"missing\.jpg: cannot read image"):
        ds[1]
    (tmp_path / "bad.txt").write_text("a.jpg 0\nb.jpg minus\n")
    with pytest.raises(DataError, match=r"bad\.txt:2: found 'b\.jpg minus'"):
        ListFileDataset(tmp_path / "bad.txt")


def test_train_samples_give_chw_uint8(tmp_path):
    save(gradient(6, 10, 7), tmp_path / "a" / "1.png", "PNG")
    sample = TrainSamples(ImageFolderDataset(tmp_path))[0]
    assert sample["label"] == 0 and sample["index"] == 0
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 6, 10)
    assert torch.equal(sample["image"][0, 2], torch.from_numpy(gradient(6, 10, 7)[2, :, 0]))


# --- CelebA ------------------------------------------------------------------------------------------

LANDMARKS_TEXT = """2
lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y
000001.jpg 69  109  106  113   77  142   73  152  108  154
000002.jpg 69  110  107  112   81  135   70  151  108  153
"""

IDENTITIES_TEXT = "000001.jpg 2880\n000002.jpg 2937\n"

ATTRIBUTES_TEXT = """2
5_o_Clock_Shadow Arched_Eyebrows Attractive 
000001.jpg -1  1  1
000002.jpg -1 -1  1
"""


def test_read_celeba_files_in_released_layout(tmp_path):
    (tmp_path / "lm.txt").write_text(LANDMARKS_TEXT)
    (tmp_path / "attr.txt").write_text(ATTRIBUTES_TEXT)
    (tmp_path / "id.txt").write_text("000001.jpg 2880\n000002.jpg 2937\n")
    landmarks = read_landmarks(tmp_path / "lm.txt")
    assert landmarks.names == ["000001.jpg", "000002.jpg"]
    assert landmarks.points.shape == (2, 5, 2) and landmarks.points[1, 2].tolist() == [81, 135]
    attributes = read_attributes(tmp_path / "attr.txt")
    assert attributes.attribute_names == ["5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive"]
    assert attributes.values.tolist() == [[-1, 1, 1], [-1, -1, 1]]
    identities = read_identities(tmp_path / "id.txt")
    assert identities.ids.tolist() == [2880, 2937]


def test_celeba_writers_round_trip(tmp_path):
    points = np.arange(20).reshape(2, 5, 2)
    write_landmarks(tmp_path / "lm.txt", ["a.jpg", "b.jpg"], points)
    lines = (tmp_path / "lm.txt").read_text().splitlines()
    assert lines[0] == "2" and lines[1].split() == LANDMARKS_TEXT.splitlines()[1].split()
    assert lines[3].split() == ["b.jpg"] + [str(v) for v in range(10, 20)]
    assert np.array_equal(read_landmarks(tmp_path / "lm.txt").points, points)
    write_attributes(tmp_path / "attr.txt", ["a.jpg"], ["Young", "Male"], np.array([[1, -1]]))
    assert (tmp_path / "attr.txt").read_text().split() == ["1", "Young", "Male", "a.jpg", "1", "-1"]
    write_identities(tmp_path / "id.txt", ["a.jpg", "b.jpg"], [4, 9])
    assert (tmp_path / "id.txt").read_text() == "a.jpg 4\nb.jpg 9\n"


def test_celeba_bad_files(tmp_path):
    (tmp_path / "lm.txt").write_text(LANDMARKS_TEXT.replace("2\n", "3\n", 1))
    with pytest.raises(DataError, match="2 rows, expected 3"):
        read_landmarks(tmp_path / "lm.txt")
    (tmp_path / "attr.txt").write_text(ATTRIBUTES_TEXT.replace("-1 -1  1", "-1  0  1"))
    with pytest.raises(DataError, match=r"attr.txt:4: Arched_Eyebrows is '0', expected 1 or -1"):
        read_attributes(tmp_path / "attr.txt")
    with pytest.raises(DataError, match="file not found"):
        read_identities(tmp_path / "absent.txt")


@pytest.mark.parametrize("reader, text, old, new, expected", [
    ("attributes", "ATTRIBUTES", "-1 -1  1", "-1 257  1", r":4: Arched_Eyebrows is '257', expected 1 or -1"),
    ("attributes", "ATTRIBUTES", "-1 -1  1", "-1 1.9  1", r":4: Arched_Eyebrows is '1.9', expected 1 or -1"),
    ("attributes", "ATTRIBUTES", "-1 -1  1", "-1 nan  1", r":4: Arched_Eyebrows is 'nan', expected 1 or -1"),
    ("landmarks", "LANDMARKS", "", "nan", r":3: lefteye_x is 'nan', expected a finite pixel coordinate"),
    ("landmarks", "LANDMARKS", "", "inf", r":3: lefteye_x is 'inf', expected a finite pixel coordinate"),
    ("landmarks", "LANDMARKS", "", "1e300", r":3: lefteye_x is '1e300', expected a finite pixel coordinate"),
    ("landmarks", "LANDMARKS", "", "x7", r":3: lefteye_x is 'x7', expected a number"),
    ("identities", "IDENTITIES", "2880", "3.7", r":1: identity is '3.7', expected a non-negative integer"),
    ("identities", "IDENTITIES", "2880", "-5", r":1: identity is '-5', expected a non-negative integer"),
    ("identities", "IDENTITIES", "2880", "1e30", r":1: identity is '1e30', expected a non-negative integer"),
    ("identities", "IDENTITIES", "2880", "nan", r":1: identity is 'nan', expected a non-negative integer"),
    ("identities", "IDENTITIES", "2880", "99999999999999999999", r"expected a non-negative integer of at most 18"),
])
def test_celeba_values_are_never_coerced(tmp_path, reader, text, old, new, expected):
    """Each of the issue's silent coercions is now a one-line error naming file, line and field."""
    content = {"ATTRIBUTES": ATTRIBUTES_TEXT, "LANDMARKS": LANDMARKS_TEXT, "IDENTITIES": IDENTITIES_TEXT}[text]
    content = content.replace(old or "000001.jpg 69 ", new if old else f"000001.jpg {new} ", 1)
    path = tmp_path / "file.txt"
    path.write_text(content)
    read = {"attributes": read_attributes, "landmarks": read_landmarks, "identities": read_identities}[reader]
    with pytest.raises(DataError, match=expected) as excinfo:
        read(path)
    assert str(path) in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_celeba_non_utf8_is_one_line(tmp_path):
    path = tmp_path / "id.txt"
    path.write_bytes(b"a.jpg 1\nb\xff.jpg 2\n")
    with pytest.raises(DataError, match=r"id.txt:2: byte 0xff is not UTF-8"):
        read_identities(path)


# --- alignment ---------------------------------------------------------------------------------------


def test_similarity_recovers_a_hand_built_transform():
    scale, angle, shift = 0.5, math.radians(30), np.array([10.0, -5.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = ARCFACE_DST.astype(np.float64)
    landmarks = (dst - shift) @ rotation / scale  # rows: R^T (dst - t) / s
    matrix = similarity_matrix(landmarks)
    expected = np.array([[0.5 * math.cos(angle), -0.5 * math.sin(angle), 10.0],
                         [0.5 * math.sin(angle), 0.5 * math.cos(angle), -5.0]])
    np.testing.assert_allclose(matrix, expected, atol=1e-5)


def test_align_face_translates_pixels_where_the_template_says():
    image = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    landmarks = ARCFACE_DST.astype(np.float64) - [5.0, 3.0]  # the template is 5 px right, 3 px down
    aligned = align_face(image, landmarks)
    assert aligned.shape == (112, 112, 3)
    np.testing.assert_array_equal(aligned[3:, 5:], image[:109, :107])
    assert not aligned[:3].any() and not aligned[:, :5].any()  # black border


def test_templates_for_other_sizes_and_68_point_reduction():
    np.testing.assert_allclose(template_for(224), ARCFACE_DST * 2)
    np.testing.assert_allclose(template_for(128)[0], [38.2946 + 8.0, 51.6963], rtol=1e-6)
    with pytest.raises(DataError, match="multiple of 112 or 128"):
        template_for(100)
    points = np.stack([np.arange(68), 2 * np.arange(68)], axis=1).astype(float)
    np.testing.assert_allclose(
        landmarks_68_to_5(points), [[37.5, 75], [43.5, 87], [30, 60], [48, 96], [54, 108]]
    )


# --- transforms --------------------------------------------------------------------------------------


def test_normalize_matches_insightface():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(normalize(images).flatten().tolist(), [-1.0, -0.6, 1.0], atol=1e-6)
    assert normalize(images).dtype == torch.float32


def test_resize_is_antialiased_bilinear():
    row = torch.tensor([0.0, 0.0, 0.0, 70.0]).expand(1, 1, 2, 4)
    # Output pixel 1 is centred on input x = 2.5; the 2x-wide triangle gives inputs 1, 2, 3 weights 1/4, 3/4, 3/4.
    np.testing.assert_allclose(resize(row, (1, 2)).flatten().tolist(), [0.0, 70 * 0.75 / 1.75], atol=1e-4)
    as_uint8 = resize(torch.full((2, 3, 8, 8), 77, dtype=torch.uint8), 4)
    assert as_uint8.dtype == torch.uint8 and as_uint8.shape == (2, 3, 4, 4) and (as_uint8 == 77).all()


def test_random_flip_uses_the_generator():
    images = torch.arange(8 * 3 * 4 * 5, dtype=torch.float32).reshape(8, 3, 4, 5)
    out, flipped = random_flip(images, torch.Generator().manual_seed(3))
    expected = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.5
    assert torch.equal(flipped, expected) and 0 < int(flipped.sum()) < 8
    for i in range(8):
        assert torch.equal(out[i], images[i].flip(-1) if expected[i] else images[i])


def test_to_chw_tensor_rejects_wrong_arrays():
    image = gradient(4, 6)
    assert torch.equal(to_chw_tensor(image), torch.from_numpy(image).permute(2, 0, 1))
    with pytest.raises(DataError, match="expected a uint8 HxWx3 RGB array"):
        to_chw_tensor(image.astype(np.float32))


# --- facekd pack ---------------------------------------------------------------------------------------


def test_pack_rec_keeps_jpeg_bytes_and_reencodes_png(tmp_path):
    save(gradient(112, 112, 0), tmp_path / "src" / "b" / "1.jpg")
    save(gradient(112, 112, 40), tmp_path / "src" / "a" / "1.png", "PNG")
    save(gradient(112, 112, 80), tmp_path / "src" / "a" / "2.jpg")
    assert main(["pack", "rec", str(tmp_path / "src"), "--out", str(tmp_path / "rec")]) == 0
    ds = RecordIODataset(tmp_path / "rec")
    assert ds.labels.tolist() == [0, 0, 1] and ds.num_classes == 2 and ds.image_size == (112, 112)
    assert bytes(ds.records.read(ds.records.position_of(3))[1]) == (tmp_path / "src" / "b" / "1.jpg").read_bytes()
    assert np.abs(ds[0][0].astype(int) - gradient(112, 112, 40)).mean() < 2


def test_pack_rec_aligns_with_landmarks(tmp_path):
    photo = gradient(160, 150, 30)
    save(photo, tmp_path / "faces" / "p.png", "PNG")
    (tmp_path / "list.txt").write_text("faces/p.png 0\n")
    points = ARCFACE_DST.astype(np.float64) + [10.0, 20.0]
    (tmp_path / "lm.txt").write_text("faces/p.png " + " ".join(f"{v:.4f}" for v in points.ravel()) + "\n")
    args = ["pack", "rec", str(tmp_path / "list.txt"), "--out", str(tmp_path / "rec"), "--landmarks", str(tmp_path / "lm.txt")]
    assert main(args) == 0
    image, label = RecordIODataset(tmp_path / "rec")[0]
    assert label == 0 and np.abs(image.astype(int) - photo[20:132, 10:122]).mean() < 2


def test_pack_errors_are_one_line(tmp_path, capsys):
    save(gradient(100, 100), tmp_path / "src" / "a" / "1.jpg")
    assert main(["pack", "rec", str(tmp_path / "src"), "--out", str(tmp_path / "rec")]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after tqdm's progress output
    assert last_line.startswith("facekd pack: error: ") and "1.jpg: image is 100x100, expected 112x112" in last_line
    assert not (tmp_path / "rec" / "train.rec").exists()


def test_pack_pairs(tmp_path):
    for name, offset in (("a.jpg", 0), ("b.jpg", 60), ("c.jpg", 120)):
        save(gradient(112, 112, offset), tmp_path / name)
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\nb.jpg c.jpg 0\n")
    assert main(["pack", "pairs", str(tmp_path / "pairs.txt"), "--out", str(tmp_path / "p.bin")]) == 0
    images, issame = load_pairs_bin(tmp_path / "p.bin")
    assert issame.tolist() == [True, False] and len(images) == 4
    assert images.encoded[3] == (tmp_path / "c.jpg").read_bytes()
    (tmp_path / "bad.txt").write_text("a.jpg b.jpg yes\n")
    assert main(["pack", "pairs", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "q.bin")]) == 2


def test_a_label_typo_in_a_list_file_is_refused_at_its_line(tmp_path):
    """`a/0.jpg 0` then `a/0.jpg 99999999999`: refused at once, no classifier of 1e11 classes."""
    from facekd.data.folders import ListFileDataset

    (tmp_path / "list.txt").write_text("a/0.jpg 0\na/1.jpg 1\n\na/0.jpg 99999999999\n")
    with pytest.raises(DataError, match=r"list.txt:4: label 99999999999 with only 3 distinct identities"):
        ListFileDataset(tmp_path / "list.txt")
    (tmp_path / "sparse.txt").write_text("a/0.jpg 0\na/1.jpg 900\n")  # a few unused classes are allowed
    assert ListFileDataset(tmp_path / "sparse.txt").num_classes == 901


def test_pack_rec_refuses_the_typo_without_leaving_temporary_files(tmp_path, capsys):
    from facekd.cli import main

    images = tmp_path / "a"
    images.mkdir()
    for name in ("0.jpg", "1.jpg"):
        Image.fromarray(np.full((112, 112, 3), 128, np.uint8)).save(images / name)
    (tmp_path / "list.txt").write_text("a/0.jpg 0\na/1.jpg 99999999999\n")
    assert main(["pack", "rec", str(tmp_path / "list.txt"), "--out", str(tmp_path / "out")]) == 2
    assert "list.txt:2: label 99999999999" in capsys.readouterr().err
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
