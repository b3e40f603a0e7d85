"""aigc_lib: the companion library of *Gold Mine or Bubble? Generative AI, Derived, Checked and Run*.

One module per concept, each imported explicitly (``from aigc_lib import losses``):

- ``runtime``     seeding, device, run profile (cpu/gpu), cache folder
- ``checks``      argument checks that raise errors naming the argument
- ``losses``      losses derived in the book, tested equal to ``torch.nn.functional``
- ``gradcheck``   finite-difference gradient checks with a per-input report
- ``checkpoint``  safetensors weights and training checkpoints
- ``training``    one training engine: ``fit`` (history, clipping, NaN guard, resume, torchrun)
- ``gan_training`` ``fit_gan``: the GAN's step on the same engine (chapter 4)
- ``viz``         history plots, image grids, results tables
- ``diagrams``    the conceptual diagrams (a package: one module per chapter subject), as SVG
- ``data``        offline datasets with fixed splits
- ``metrics``     evaluation metrics, calibration, bootstrap intervals
- ``judge``       the digit classifier that scores generated digits (chapters 3–5)
- ``optim``       optimisers written out for teaching, learning-rate schedules
- ``models``      the models built in the book (a package: one module per model)
- ``results``     what each chapter measured, recorded for the verdict chapter
- ``finetune``    fine-tuning a causal LM on chat conversations: templates, multi-turn masks, scores
- ``preference``  preference tuning (DPO): pairs, training step, held-out measures
- ``retrieval``   nearest-answer retrieval with a sentence encoder, cached embeddings
- ``encoders``    pretrained sentence encoders offline: tokenizing, mean pooling, embeddings
- ``classifier``  a classifier on a pretrained encoder, fully or with LoRA (peft), via ``fit``
- ``augment``     simple text augmentation (random deletion, swap, typos), seeded
- ``costs``       parameter counts, size on disk, latency and throughput
"""

__version__ = "0.1.0"
