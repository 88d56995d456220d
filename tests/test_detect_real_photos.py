"""Real photos (the face_recognition 1.3.0 sdist's tests/test_images: three of Obama, one of Biden)
through facekd's own path: `pack pairs --detect` (YuNet + norm_crop alignment), then SFace as an
ONNX teacher with its convention detected, checked against onnxruntime run by hand on the same crops.
The sdist is fetched with pip download at test time (network: PyPI), hence the slow marker."""

import subprocess
import sys
import tarfile

import numpy as np
import pytest

from facekd.cli import main

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")
PAIRS = [("obama.jpg", "obama2.jpg", 1), ("obama.jpg", "obama3.jpg", 1), ("obama2.jpg", "obama3.jpg", 1),
         ("obama.jpg", "biden.jpg", 0), ("obama2.jpg", "biden.jpg", 0), ("obama3.jpg", "biden.jpg", 0)]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    cache = tmp_path_factory.mktemp("face_recognition")
    fetched = subprocess.run([sys.executable, "-m", "pip", "download", "face_recognition==1.3.0", "--no-deps",
                              "--no-binary", ":all:", "-d", str(cache), "-q"], capture_output=True, text=True, timeout=300)
    archives = list(cache.glob("face_recognition-1.3.0.tar.gz"))
    if fetched.returncode != 0 or not archives:
        pytest.skip(f"face_recognition 1.3.0 sdist unavailable: {fetched.stderr.strip()[-200:]}")
    folder = cache / "photos"
    folder.mkdir()
    with tarfile.open(archives[0]) as archive:
        for name in PHOTOS:
            (folder / name).write_bytes(archive.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}").read())
    return folder


def onnxruntime_by_hand(sface_path, crops: np.ndarray) -> np.ndarray:
    """SFace on uint8 RGB crops, fed as its graph expects (raw 0..255, NCHW, one image per run)."""
    import onnx
    import onnxruntime

    from facekd.deploy.onnx_teacher import load_pruned_model

    session = onnxruntime.InferenceSession(onnx.load_model_from_string(
        load_pruned_model(sface_path).SerializeToString()).SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: crop.transpose(2, 0, 1)[None].astype(np.float32)})[0]
                           for crop in crops])


@pytest.mark.slow
def test_real_photos_through_pack_detect_and_the_sface_teacher(photo_folder, sface_path, tmp_path, capsys):
    pytest.importorskip("cv2")
    from facekd.data.pairs_bin import load_pairs_bin
    from facekd.deploy.onnx_teacher import OnnxEmbedder
    from facekd.deploy.samples import model_inputs

    (photo_folder / "pairs.txt").write_text("".join(f"{a} {b} {same}\n" for a, b, same in PAIRS))
    assert main(["pack", "pairs", str(photo_folder / "pairs.txt"), "--detect", "--out", str(tmp_path / "real.bin")]) == 0
    assert main(["eval", "--model", sface_path, "--bin", str(tmp_path / "real.bin"), "--nfolds", "1",
                 "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "input (pixel - 0) / 1, RGB [normalised inside the graph" in printed
    assert "ROC AUC: 1.00000" in printed

    images, issame = load_pairs_bin(tmp_path / "real.bin")
    crops = np.stack([images[i] for i in range(len(images))])
    ours = OnnxEmbedder(sface_path)(model_inputs(crops, 112)).numpy()
    theirs = onnxruntime_by_hand(sface_path, crops)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4 * np.abs(theirs).max())
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    cosine = np.sum(unit[0::2] * unit[1::2], axis=1)
    print("SFace cosines:", dict(zip([f"{a}-{b}" for a, b, _ in PAIRS], np.round(cosine, 4))))
    assert cosine[issame].min() > 0.6 and cosine[~issame].max() < 0.35
