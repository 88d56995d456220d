"""facekd.evaluate.ijb against insightface's per-template loops on a tiny meta set."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_curve
from sklearn.preprocessing import normalize

from facekd.errors import DataError
from facekd.evaluate import ijb

# image_name template_id media_id, in file order: template 7 has two frames of media 70 (not
# adjacent) and one still; template 3 one image; template 12 three stills; template 5 two frames.
FACES = [
    ("a.jpg", 7, 70), ("b.jpg", 3, 31), ("c.jpg", 7, 71), ("d.jpg", 12, 120), ("e.jpg", 7, 70),
    ("f.jpg", 12, 121), ("g.jpg", 5, 50), ("h.jpg", 12, 122), ("i.jpg", 5, 50), ("j.jpg", 3, 70),
]
PAIRS = [(7, 3, 1), (7, 12, 0), (3, 12, 0), (5, 7, 1), (12, 5, 0), (3, 5, 0), (12, 7, 1), (5, 3, 0)]


def write_meta(root, target="IJBC", faces=FACES, pairs=PAIRS, rng=None):
    rng = rng or np.random.default_rng(0)
    meta = root / target / "meta"
    meta.mkdir(parents=True)
    prefix = target.lower()
    (meta / f"{prefix}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in faces))
    (meta / f"{prefix}_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    lines = []
    for name, _, _ in faces:
        points = rng.uniform(20, 90, 10)
        score = rng.uniform(0.5, 1.0)
        lines.append(" ".join([name] + [f"{p:.3f}" for p in points] + [f"{score:.6f}"]) + "\n")
    (meta / f"{prefix}_name_5pts_score.txt").write_text("".join(lines))
    return meta


def ref_templates(feats, templates, medias):
    """insightface image2template_feature, loop for loop."""
    unique_templates = np.unique(templates)
    out = np.zeros((len(unique_templates), feats.shape[1]))
    for k, t in enumerate(unique_templates):
        (ind_t,) = np.where(templates == t)
        face_feats, face_medias = feats[ind_t], medias[ind_t]
        media_feats = []
        for u, ct in zip(*np.unique(face_medias, return_counts=True)):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m] if ct == 1 else np.mean(face_feats[ind_m], axis=0, keepdims=True))
        out[k] = np.sum(np.array(media_feats), axis=0)
    return normalize(out), unique_templates  # arcface_torch normalises with sklearn


def ref_tar(labels, scores, far):
    fpr, tpr, _ = roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, index = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[index]


def test_reads_meta_in_file_order(tmp_path):
    write_meta(tmp_path)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    assert list(meta.image_names) == [f[0] for f in FACES]
    np.testing.assert_array_equal(meta.templates, [f[1] for f in FACES])
    np.testing.assert_array_equal(meta.medias, [f[2] for f in FACES])
    np.testing.assert_array_equal(meta.pair_templates, [p[:2] for p in PAIRS])
    np.testing.assert_array_equal(meta.pair_labels, [p[2] for p in PAIRS])
    first = (tmp_path / "IJBC/meta/ijbc_name_5pts_score.txt").read_text().split("\n")[0].split()
    np.testing.assert_array_equal(meta.landmarks[0], np.float32(first[1:11]).reshape(5, 2))
    assert meta.faceness[0] == np.float32(first[11])
    assert meta.image_dir == tmp_path / "IJBC" / "loose_crop"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_template_features_equal_insightface_loop(dtype):
    rng = np.random.default_rng(1)
    n = 400
    templates = rng.integers(0, 40, n)
    medias = rng.integers(0, 60, n)  # media ids shared across templates, as in IJB
    feats = rng.normal(size=(n, 16)).astype(dtype)
    got, got_ids = ijb.template_features(feats, templates, medias)
    want, want_ids = ref_templates(feats, templates, medias)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_array_equal(got, want)  # same additions in the same order


def test_evaluate_matches_hand_pipeline(tmp_path):
    write_meta(tmp_path)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    raw = np.random.default_rng(2).normal(size=(len(FACES), 8)).astype(np.float32)
    result = ijb.evaluate_ijb(raw, meta)

    weighted = raw * meta.faceness[:, None]  # N1 D1: norm kept, times faceness
    feats, ids = ref_templates(weighted, meta.templates, meta.medias)
    row = {t: i for i, t in enumerate(ids)}
    scores = np.array([feats[row[a]] @ feats[row[b]] for a, b, _ in PAIRS])
    np.testing.assert_allclose(result.scores, scores, rtol=0, atol=1e-12)
    for far in ijb.FAR_TARGETS:
        assert result.tar_at_far[far] == ref_tar(meta.pair_labels, scores, far)
    assert result.num_templates == 4 and result.num_pairs == 8 and result.num_genuine == 3


def test_switches_follow_arcface_torch_meaning(tmp_path):
    write_meta(tmp_path)
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    raw = np.random.default_rng(3).normal(size=(len(FACES), 8)).astype(np.float32)
    plain = ijb.evaluate_ijb(raw, meta, use_norm_score=False, use_detector_score=False)
    unit = raw / np.sqrt(np.sum(raw**2, -1, keepdims=True))
    feats, ids = ref_templates(unit, meta.templates, meta.medias)
    row = {t: i for i, t in enumerate(ids)}
    want = np.array([feats[row[a]] @ feats[row[b]] for a, b, _ in PAIRS])
    np.testing.assert_allclose(plain.scores, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("block_entries", [1 << 27, 100])  # one Gram block; many row blocks
def test_dense_and_sparse_scoring_agree(monkeypatch, block_entries):
    monkeypatch.setattr(ijb, "GRAM_BLOCK_ENTRIES", block_entries)
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(300, 32))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = np.arange(300) * 3
    dense = np.stack(np.meshgrid(ids[:20], ids[20:]), -1).reshape(-1, 2)  # every pair: Gram path
    dense = dense[rng.permutation(len(dense))]  # pairs in no particular order
    sparse = rng.choice(ids, size=(50, 2))  # few pairs over many templates: per-pair path
    for pairs in (dense, sparse):
        rows = pairs // 3
        want = np.einsum("ij,ij->i", feats[rows[:, 0]], feats[rows[:, 1]])
        np.testing.assert_allclose(ijb.pair_scores(feats, ids, pairs), want, rtol=0, atol=1e-14)


def test_tar_lookup_picks_largest_tpr_among_equal_fpr():
    labels = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, 0.4, 0.3, 0.1])
    tar, _, _, _ = ijb.tar_at_far(labels, scores, fars=[0.0, 0.3, 0.5])
    for far, value in tar.items():
        assert value == ref_tar(labels, scores, far)


def test_aligned_images_read_bgr_and_return_rgb(tmp_path):
    write_meta(tmp_path, faces=[("x.png", 1, 1), ("y.png", 2, 2)], pairs=[(1, 2, 0), (2, 1, 1)])
    from facekd.data.align import ARCFACE_DST

    meta_file = tmp_path / "IJBC/meta/ijbc_name_5pts_score.txt"
    points = " ".join(f"{v:.4f}" for v in ARCFACE_DST.reshape(-1))  # identity alignment
    meta_file.write_text(f"x.png {points} 0.9\ny.png {points} 0.8\n")
    crops = tmp_path / "IJBC/loose_crop"
    crops.mkdir()
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(crops / "x.png"), rgb[..., ::-1])
    images = ijb.AlignedIJBImages(ijb.read_ijb_meta(tmp_path, "IJBC"))
    aligned = images[0]
    assert aligned.shape == (112, 112, 3)
    assert abs(int(aligned[56, 56, 0]) - 200) <= 1 and aligned[56, 56, 2] == 0
    with pytest.raises(DataError, match="y.png"):
        images[1]


def test_missing_meta_file_is_one_line_error(tmp_path):
    meta = write_meta(tmp_path)
    (meta / "ijbc_template_pair_label.txt").unlink()
    with pytest.raises(DataError, match="ijbc_template_pair_label.txt: file not found") as info:
        ijb.read_ijb_meta(tmp_path, "IJBC")
    assert "\n" not in str(info.value)


def test_mismatched_image_lists_rejected(tmp_path):
    meta = write_meta(tmp_path)
    path = meta / "ijbc_name_5pts_score.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[1], lines[0]] + lines[2:]))
    with pytest.raises(DataError, match="line 1 names b.jpg"):
        ijb.read_ijb_meta(tmp_path, "IJBC")


def test_pair_with_unknown_template_rejected(tmp_path):
    write_meta(tmp_path, pairs=PAIRS + [(7, 99, 1)])
    meta = ijb.read_ijb_meta(tmp_path, "IJBC")
    with pytest.raises(DataError, match="template 99"):
        ijb.evaluate_ijb(np.ones((len(FACES), 4), np.float32), meta)


def test_wrong_column_count_rejected(tmp_path):
    meta = write_meta(tmp_path)
    (meta / "ijbc_face_tid_mid.txt").write_text("a.jpg 7\n")
    with pytest.raises(DataError, match="ijbc_face_tid_mid.txt"):
        ijb.read_ijb_meta(tmp_path, "IJBC")


@pytest.mark.parametrize("offset", [0, -5, 1 << 40])  # table lookup; binary search for other ids
def test_pair_template_lookup_handles_any_ids(offset):
    ids = np.array([2, 9, 40]) + offset
    feats = np.eye(3)
    pairs = np.array([[9, 2], [40, 40], [2, 9]]) + offset
    np.testing.assert_array_equal(ijb.pair_scores(feats, ids, pairs), [0.0, 1.0, 0.0])
    with pytest.raises(DataError, match=f"template {41 + offset}"):
        ijb.pair_scores(feats, ids, np.array([[2, 41]]) + offset)
