"""aigc_lib: the companion library of *Gold Mine or Bubble? Generative AI, Derived, Checked and Run*.

One module per concept, each imported explicitly (``from aigc_lib import losses``):

- ``runtime``     seeding, device, run profile (cpu/gpu), cache folder
- ``checks``      argument checks that raise errors naming the argument
- ``losses``      losses derived in the book, tested equal to ``torch.nn.functional``
- ``gradcheck``   finite-difference gradient checks with a per-input report
- ``checkpoint``  safetensors weights and training checkpoints
- ``training``    ``fit``: the training loop, with history, clipping, NaN guard and resume
- ``viz``         history plots, image grids, results tables
- ``data``        offline datasets with fixed splits
- ``metrics``     evaluation metrics
- ``optim``       optimisers written out for teaching, learning-rate schedules
- ``models``      the models built in the book (a package: one module per model)
- ``results``     what each chapter measured, recorded for the verdict chapter
- ``finetune``    fine-tuning a causal LM on prompt → answer pairs: masked labels, answer perplexity
- ``encoders``    pretrained sentence encoders offline: tokenizing, mean pooling, embeddings
- ``classifier``  a classifier on a pretrained encoder, fully or with LoRA (peft), via ``fit``
- ``augment``     simple text augmentation (random deletion, swap, typos), seeded
- ``costs``       parameter counts, size on disk, latency and throughput
- ``robust``      attacks in embedding space (FGM, PGD) and on words; adversarial training
- ``continual``   learning new classes: masked softmax, replay, Fisher and EWC, adapters per batch
"""

__version__ = "0.1.0"
