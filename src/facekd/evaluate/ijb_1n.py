"""IJB-B / IJB-C 1:N identification as insightface's `_evaluation_/ijb/ijb_1n.py` (formats.md 3.3).

Protocol files under `<root>/<target>/meta/`, comma-separated with one header row, one row per
image; the first two columns are template_id and subject_id (the NIST files go on with FILENAME,
SIGHTING_ID, ...; those columns are ignored, as insightface reads columns 0 and 1 only):

- IJB-C: `ijbc_1N_gallery_G1.csv`, `ijbc_1N_gallery_G2.csv`, `ijbc_1N_probe_mixed.csv`
- IJB-B: `ijbb_1N_gallery_S1.csv`, `ijbb_1N_gallery_S2.csv`, `ijbb_1N_probe_mixed.csv`

As the reference does: the gallery is the two gallery files concatenated, each side is reduced to
its distinct template ids in ascending order with the subject of the first row naming it
(`np.unique(..., return_index=True)`), and the images, template and media ids are those of the
1:1 protocol (`face_tid_mid`, `name_5pts_score`), so one embedding pass serves both. Template
features are the 1:1 ones (`ijb.meta_template_features`: F1 flip sum, N1, D1, media mean, media
sum, L2): ijb_1n's `image2template_feature` is the same loop as eval_ijbc's, run over all images
of each chosen template (it L2-normalises by hand instead of with sklearn, the same up to
rounding, and `identify` normalises every row again). Probes are then identified against the gallery templates by
`identification.identify` (rank-1/5/10, TPIR at FPIR 0.01 and 0.1; insightface's `evaluation`).

insightface's `gen_mask` needs exactly one gallery template per subject and a mate for every
probe; we check that (and that every protocol template has images) when reading, and name the
file and line instead of raising a RuntimeError or scoring a zero template.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekd.errors import DataError
from facekd.evaluate.identification import IdentificationResult, identify
from facekd.evaluate.ijb import IJBMeta, meta_template_features

GALLERY_NAMES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


@dataclass(frozen=True)
class TemplateList:
    """Distinct templates of one or more protocol files: ascending ids, each one's subject and
    where it was first named (for error messages)."""

    templates: np.ndarray  # (T,) int64, ascending
    subjects: np.ndarray  # (T,) int64
    files: tuple[Path, ...]
    file_index: np.ndarray  # (T,) index into `files` of the first row naming the template
    lines: np.ndarray  # (T,) 1-based line of that row

    def origin(self, row: int) -> str:
        return f"{self.files[self.file_index[row]]}: line {self.lines[row]}"


@dataclass(frozen=True)
class IJB1NProtocol:
    target: str
    gallery: TemplateList  # gallery 1 then gallery 2, as insightface concatenates them
    probes: TemplateList
    # Row of each template among the sorted templates of the IJBMeta it was read with.
    gallery_rows: np.ndarray  # (G,)
    probe_rows: np.ndarray  # (P,)


def protocol_paths(root: str | os.PathLike, target: str) -> dict[str, Path]:
    """Where insightface's ijb_1n looks for the 1:N files of `target` ("IJBC" or "IJBB")."""
    if target not in GALLERY_NAMES:
        raise DataError(f"IJB target: found {target!r}, expected IJBB or IJBC")
    meta = Path(root) / target / "meta"
    prefix = target.lower()
    first, second = GALLERY_NAMES[target]
    return {
        "gallery_1": meta / f"{prefix}_1N_gallery_{first}.csv",
        "gallery_2": meta / f"{prefix}_1N_gallery_{second}.csv",
        "probe": meta / f"{prefix}_1N_probe_mixed.csv",
    }


def read_ijb_1n_protocol(root: str | os.PathLike, meta: IJBMeta) -> IJB1NProtocol:
    """Read the gallery and probe files of `meta`'s target and check them against its images:
    every template has images and every probe has exactly one gallery mate."""
    paths = protocol_paths(root, meta.target)
    for path in paths.values():
        if not path.is_file():
            raise DataError(
                f"{path}: file not found, expected the {meta.target} 1:N protocol file of the insightface IJB layout"
            )
    gallery = read_template_subjects(paths["gallery_1"], paths["gallery_2"])
    probes = read_template_subjects(paths["probe"])
    _check_one_template_per_subject(gallery)
    _check_probes_have_mates(probes, gallery)
    image_templates = np.unique(meta.templates)  # the row order of meta_template_features
    return IJB1NProtocol(
        target=meta.target, gallery=gallery, probes=probes,
        gallery_rows=_template_rows(gallery, image_templates, meta.target),
        probe_rows=_template_rows(probes, image_templates, meta.target),
    )


def read_template_subjects(*paths: Path) -> TemplateList:
    """The distinct templates named by the rows of `paths` (read in order), with their subjects.

    A template may span many rows (one per image) but must keep one subject throughout.
    """
    templates, subjects, file_index, lines = [], [], [], []
    for index, path in enumerate(paths):
        rows = _read_rows(path)
        templates += rows[0]
        subjects += rows[1]
        lines += rows[2]
        file_index += [index] * len(rows[0])
    templates_arr, subjects_arr = np.array(templates, dtype=np.int64), np.array(subjects, dtype=np.int64)
    file_arr, line_arr = np.array(file_index, dtype=np.int64), np.array(lines, dtype=np.int64)
    unique, first, inverse = np.unique(templates_arr, return_index=True, return_inverse=True)
    conflict = np.flatnonzero(subjects_arr != subjects_arr[first][inverse])
    if len(conflict):
        row, earlier = conflict[0], first[inverse[conflict[0]]]
        raise DataError(
            f"{paths[file_arr[row]]}: line {line_arr[row]} gives template {templates_arr[row]} subject "
            f"{subjects_arr[row]}, but {paths[file_arr[earlier]]}: line {line_arr[earlier]} gave it subject "
            f"{subjects_arr[earlier]}; expected one subject per template"
        )
    return TemplateList(
        templates=unique, subjects=subjects_arr[first], files=tuple(paths),
        file_index=file_arr[first], lines=line_arr[first],
    )


def _read_rows(path: Path) -> tuple[list[int], list[int], list[int]]:
    """template ids, subject ids and line numbers of the data rows of one protocol CSV."""
    templates, subjects, lines = [], [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file, expected a header row then template_id,subject_id rows")
        if len(header) >= 2 and _is_integer(header[0]) and _is_integer(header[1]):
            raise DataError(f"{path}: line 1 is a data row ({','.join(header[:2])}), expected a header row")
        for row in reader:
            if not row or not "".join(row).strip():
                continue  # blank line, skipped as np.loadtxt does
            if len(row) < 2:
                raise DataError(
                    f"{path}: line {reader.line_num} has {len(row)} field, expected at least 2 (template_id,subject_id)"
                )
            for field, value in (("template_id", row[0]), ("subject_id", row[1])):
                if not _is_integer(value):
                    raise DataError(f"{path}: line {reader.line_num} {field}: found {value!r}, expected an integer")
            templates.append(int(row[0]))
            subjects.append(int(row[1]))
            lines.append(reader.line_num)
    if not templates:
        raise DataError(f"{path}: no data rows, expected template_id,subject_id rows after the header")
    return templates, subjects, lines


def _is_integer(text: str) -> bool:
    digits = text.strip()
    return digits.removeprefix("-").isdigit() and digits.isascii()


def _check_one_template_per_subject(gallery: TemplateList) -> None:
    # Rows in file order, so the error names the template that came second.
    order = np.lexsort((gallery.lines, gallery.file_index))
    _, first, inverse = np.unique(gallery.subjects[order], return_index=True, return_inverse=True)
    repeated = np.flatnonzero(first[inverse] != np.arange(len(order)))
    if len(repeated):
        second, earlier = int(order[repeated[0]]), int(order[first[inverse[repeated[0]]]])
        raise DataError(
            f"{gallery.origin(second)}: subject {gallery.subjects[second]} has a second gallery template "
            f"{gallery.templates[second]} (template {gallery.templates[earlier]} at {gallery.origin(earlier)}); "
            "expected one gallery template per subject"
        )


def _check_probes_have_mates(probes: TemplateList, gallery: TemplateList) -> None:
    orphan = np.flatnonzero(~np.isin(probes.subjects, gallery.subjects))
    if len(orphan):
        row = int(orphan[np.argmin(probes.lines[orphan])])
        names = " or ".join(path.name for path in gallery.files)
        raise DataError(
            f"{probes.origin(row)}: probe template {probes.templates[row]} has subject {probes.subjects[row]}, "
            f"which has no template in {names}; expected every probe subject in the gallery"
        )


def evaluate_ijb_1n(
    flip_summed: np.ndarray,
    meta: IJBMeta,
    protocol: IJB1NProtocol,
    *,
    use_norm_score: bool = True,
    use_detector_score: bool = True,
) -> IdentificationResult:
    """IJB 1:N from per-image embeddings (rows in `name_5pts_score` order)."""
    if protocol.target != meta.target:
        raise DataError(f"IJB 1:N: protocol of {protocol.target} with the images of {meta.target}, expected one target")
    feats, _ = meta_template_features(
        flip_summed, meta, use_norm_score=use_norm_score, use_detector_score=use_detector_score
    )
    return identify(
        feats[protocol.probe_rows], protocol.probes.subjects, feats[protocol.gallery_rows], protocol.gallery.subjects
    )


def _template_rows(side: TemplateList, image_templates: np.ndarray, target: str) -> np.ndarray:
    """Row of each protocol template among the image templates (both ascending)."""
    rows = np.searchsorted(image_templates, side.templates).clip(max=len(image_templates) - 1)
    missing = np.flatnonzero(image_templates[rows] != side.templates)
    if len(missing):
        row = int(missing[np.lexsort((side.lines[missing], side.file_index[missing]))[0]])
        raise DataError(
            f"{side.origin(row)}: template {side.templates[row]} has no images in "
            f"{target.lower()}_face_tid_mid.txt, expected every 1:N template to have images"
        )
    return rows
