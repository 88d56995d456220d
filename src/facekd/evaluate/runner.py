"""What `facekd eval` runs: embed each target with one model (or take saved embeddings), score it
with the matching evaluator, print the headline numbers and write the reports.

An IJB target is embedded once and scored under 1:1 verification, 1:N identification or both."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from facekd.data import RecordIODataset, load_pairs_bin
from facekd.errors import ConfigError, DataError
from facekd.evaluate import identification, ijb, ijb_1n, report, verification
from facekd.evaluate.embed import embed_images, evaluate_bin
from facekd.fileio import atomic_open
from facekd.registry import Registry

IJB_PROTOCOLS: Registry[type] = Registry("IJB protocol")


@dataclass
class IJBResults:
    """What one IJB target gave under each protocol that was run."""

    verification: ijb.IJBResult | None = None
    identification: identification.IdentificationResult | None = None


@IJB_PROTOCOLS.register("1v1")
class IJBVerification:
    """1:1 template verification: TAR@FAR, the score file and the ROC."""

    needs_pairs = True

    def __init__(self, root: Path, meta: ijb.IJBMeta) -> None:
        self.meta = meta

    def score(self, evaluation: "Evaluation", target: str, features: np.ndarray, results: IJBResults) -> None:
        result = ijb.evaluate_ijb(features, self.meta, **evaluation.ijb_switches)
        results.verification = result
        with atomic_open(evaluation.out / f"{target.lower()}.npy", "wb") as handle:
            np.save(handle, result.scores)
        table = "  ".join(f"{far:.0e}: {tar:.5f}" for far, tar in result.tar_at_far.items())
        print(f"[{target}] TAR@FAR  {table}")
        evaluation.write_report(target.lower(), f"{target} 1:1 verification", report.ijb_summary(result),
                           report.ijb_curve(result), report.IJB_AXES)


@IJB_PROTOCOLS.register("1n")
class IJBIdentification:
    """1:N identification of the mixed probes against the gallery files: rank-k and TPIR@FPIR."""

    needs_pairs = False

    def __init__(self, root: Path, meta: ijb.IJBMeta) -> None:
        self.meta = meta
        self.protocol = ijb_1n.read_ijb_1n_protocol(root, meta)

    def score(self, evaluation: "Evaluation", target: str, features: np.ndarray, results: IJBResults) -> None:
        result = ijb_1n.evaluate_ijb_1n(features, self.meta, self.protocol, **evaluation.ijb_switches)
        results.identification = result
        evaluation.print_identification(f"{target} 1:N", result)
        evaluation.write_report(f"{target.lower()}_1n", f"{target} 1:N identification",
                           report.ijb_identification_summary(target, result),
                           report.identification_curve(result), report.IDENTIFICATION_AXES)


class ImagesOf:
    """The images of a face dataset (`ds[i] -> (image, label)`) as a sequence of images."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.dataset[index][0]


@dataclass
class Evaluation:
    """One model (or one embeddings file) evaluated on several targets, reports under `out`."""

    out: Path
    name: str
    model: torch.nn.Module | None
    embeddings_path: Path | None
    device: torch.device
    input_size: int | None
    batch_size: int
    nfolds: int
    progress: bool
    norm_score: bool
    detector_score: bool
    flip_test: bool

    @property
    def ijb_switches(self) -> dict[str, bool]:
        return {"use_norm_score": self.norm_score, "use_detector_score": self.detector_score}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Evaluation:
        from facekd.models.backbone import backbone_spec
        from facekd.models.loading import kwargs_flag, load_backbone
        from facekd.runtime import pick_device

        device = pick_device(args.device)
        model, input_size = None, args.input_size
        if args.model is not None and Path(args.model).suffix.lower() == ".onnx":
            from facekd.deploy.onnx_teacher import OnnxEmbedder

            model = OnnxEmbedder(args.model)
            if args.input_size not in (None, model.input_size):
                raise ConfigError(f"--input-size {args.input_size}: {args.model} declares {model.input_size} px")
            input_size = model.input_size
            print(f"{args.model}: {model.convention.describe()}; {input_size} px, {model.embedding_size}-d")
        elif args.model is not None:
            overrides = {} if args.input_size is None else {"input_size": args.input_size}
            model = load_backbone(args.model, args.arch, **{**kwargs_flag(args.kwargs), **overrides}).to(device)
            input_size = backbone_spec(model)[1].get("input_size", input_size)
        source = args.model if args.model is not None else args.embeddings
        return cls(
            out=args.out, name=args.name or Path(source).stem, model=model, embeddings_path=args.embeddings,
            device=device, input_size=input_size, batch_size=args.batch_size, nfolds=args.nfolds,
            progress=not args.no_progress, norm_score=args.norm_score, detector_score=args.detector_score,
            flip_test=args.flip_test,
        )

    def verification(self, bin_path: Path) -> verification.VerificationResult:
        if self.model is not None:
            result = evaluate_bin(
                self.model, bin_path, batch_size=self.batch_size, device=self.device,
                input_size=self.input_size, nfolds=self.nfolds, progress=self.progress,
            )
        else:
            _, issame = load_pairs_bin(bin_path)
            result = verification.evaluate(self._saved_embeddings(), issame, nfolds=self.nfolds)
        stem = Path(bin_path).stem
        xnorm = "" if result.xnorm is None else f"  XNorm {result.xnorm:.5f}"
        notes = verification.small_set_warnings(result.num_pairs, result.num_impostors, self.nfolds)
        if result.threshold_free:
            print(f"[{stem}] ROC AUC: {result.auc:.5f}{xnorm}  (--nfolds 1: no threshold is chosen, so no "
                  "accuracy or VAL)")
        else:
            val = ("not resolvable" if any(note.startswith("VAL@FAR") for note in notes)
                   else f"{result.val:.5f}+-{result.val_std:.5f}")
            print(f"[{stem}] Accuracy-Flip: {result.accuracy:.5f}+-{result.std:.5f}{xnorm}  VAL@FAR=1e-3: {val}")
        for note in notes:
            print(f"[{stem}] warning: {note}")
        self.write_report(stem, f"{stem} verification", report.verification_summary(result),
                     report.verification_curve(result), report.VERIFICATION_AXES)
        return result

    def ijb(self, root: Path, target: str, protocols: Sequence[str] = ("1v1",)) -> IJBResults:
        """IJB protocols (`IJB_PROTOCOLS`: "1v1" verification, "1n" identification) from one embedding pass."""
        if not protocols:
            raise ConfigError(f"IJB protocols: none given, expected some of {', '.join(IJB_PROTOCOLS.names())}")
        kinds = [IJB_PROTOCOLS.get(name) for name in protocols]
        meta = ijb.read_ijb_meta(root, target, with_pairs=any(kind.needs_pairs for kind in kinds))
        # Each protocol reads its files before the (long) embedding pass, so a bad CSV fails at once.
        prepared = [kind(root, meta) for kind in kinds]
        if self.model is not None:
            features = self._embed(ijb.AlignedIJBImages(meta), flip=self.flip_test)
        else:
            features = self._saved_embeddings()
        results = IJBResults()
        for protocol in prepared:
            protocol.score(self, target, features, results)
        return results

    def identification(self, folder: Path) -> identification.IdentificationResult:
        if self.model is None:
            raise ConfigError("--ident: needs --model, saved embeddings are not supported for 1:N")
        gallery_set, probe_set = RecordIODataset(folder / "gallery"), RecordIODataset(folder / "probe")
        gallery, gallery_ids = identification.subject_templates(
            self._embed(ImagesOf(gallery_set)), gallery_set.labels
        )
        probes = self._embed(ImagesOf(probe_set))
        distractors = None
        if (folder / "distractors").exists():
            distractors = self._embed(ImagesOf(RecordIODataset(folder / "distractors")))
        result = identification.identify(probes, probe_set.labels, gallery, gallery_ids, distractor_feats=distractors)
        self.print_identification(folder.name, result)
        self.write_report("identification", "1:N identification", report.identification_summary(result),
                     report.identification_curve(result), report.IDENTIFICATION_AXES)
        return result

    @staticmethod
    def print_identification(label: str, result: identification.IdentificationResult) -> None:
        ranks = "  ".join(f"rank-{k}: {rate:.5f}" for k, rate in result.rank_rates.items())
        tpir = "  ".join(f"TPIR@FPIR={f:g}: {t:.5f}" for f, t in result.tpir_at_fpir.items())
        print(f"[{label}] {ranks}  {tpir}")

    def _embed(self, images, flip: bool = True) -> np.ndarray:
        return embed_images(
            self.model, images, batch_size=self.batch_size, device=self.device,
            input_size=self.input_size, flip=flip, progress=self.progress,
        )

    def _saved_embeddings(self) -> np.ndarray:
        try:
            return np.load(self.embeddings_path, allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{self.embeddings_path}: file not found, expected a .npy of embeddings") from None
        except ValueError as exc:
            raise DataError(f"{self.embeddings_path}: not a plain .npy array ({exc})") from None

    def write_report(self, stem, title, summary, curve, axes) -> None:
        paths = report.write_report(self.out, stem, title=title, model=self.name, summary=summary,
                                    curve=curve, axes=axes)
        print(f"  wrote {', '.join(os.fspath(p) for p in paths.values())}")
