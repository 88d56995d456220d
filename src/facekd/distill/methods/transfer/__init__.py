"""Wang, Lan, Zhang 2017 (arXiv 1709.02929): distil classification, then transfer to alignment and verification.

Stage 1, classification (`facekd distill --method transfer`): Hinton KD,

    L = CE_margin(y, z_s) + alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)),

with teacher logits z_t = s * cos(e_t, teacher centres) and student logits z_s = s * cos(e_s,
student centres) of the student's own MarginClassifier, s = the configured margin scale. The CE
term is the student's usual margin softmax (the margin applies there only; the soft targets use
plain scaled cosines) and is *not* weighted by (1 - alpha): this is the form of the method spec
and of the KD baselines in TFace/FaceX-Zoo; alpha alone sets the balance.

The "initialisation trick": the student (the teacher's architecture at a smaller width/depth)
starts from the teacher, tensor by tensor, copied where shapes match and compressed by channel
L1-norm ranking where they do not (`facekd.distill.width_init`); its classifier starts from the
teacher's centres. `student_init.json` lists what was copied, compressed or left random.

Stage 2, alignment: a landmark head on the classification student regresses the 5 CelebA points
against the ground truth and the teacher's predictions (`facekd.distill.alignment`); NME is written
to `alignment/metrics.json`. Stage 3, verification: the classification student (backbone and
classifier) keeps training with its identity loss plus a feature loss to the teacher's embedding.

`TransferDistiller.run_pipeline(setup, fit, train_samples)` runs all stages in order (the pipeline
protocol of `facekd.distill.distiller.PipelineMethod`). This package: `classification.py` (the
distiller and the pipeline), `stages.py` (alignment and verification), `alignment.py` (landmarks).
"""

from facekd.distill.methods.transfer.classification import TransferDistiller

__all__ = ["TransferDistiller"]
