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
- ``costs``       parameter counts, size on disk, latency and throughput; FLOPs, money and
                  energy per request, the escalation policy and the break-even of a use case
- ``quantize``    bf16 and int8 (torchao) copies of a model, an int8 reference, size in memory
- ``memory``      bytes to train and to serve a model: weights, gradients, Adam, activations
- ``decoding``    distinct n-grams of samples, speculative decoding
- ``scaling``     a sweep of small GPTs, a fitted scaling law, its frontier and forecast, CPU MFU
- ``robust``      attacks in embedding space (FGM, PGD) and on words; adversarial training
- ``continual``   learning new classes: masked softmax, replay, Fisher and EWC, adapters per batch
"""

import logging as _logging

__version__ = "0.1.0"


_NOT_FOR_THE_READER = ("Failed to load", "Detected no triton",
                       "is an Enum subclass and is now natively supported")


class _QuietTorchaoImport(_logging.Filter):
    """``transformers`` imports ``torchao`` (chapter 11's quantisation library) whenever it
    loads a model. On a CPU-only torch that import logs that torchao's CUDA kernels cannot load
    (none is needed on a CPU) and that Triton (a GPU compiler) is missing, and torch logs that
    torchao's enum registrations are no longer needed; none of this concerns the reader, so
    these messages, and only they, are dropped."""

    def filter(self, record: _logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(part in text for part in _NOT_FOR_THE_READER)


for _name in ("torchao", "torchao.kernel.intmm", "torch.utils._pytree"):
    _logging.getLogger(_name).addFilter(_QuietTorchaoImport())
