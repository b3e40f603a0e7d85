"""Conceptual diagrams of the book: pictures of an idea, drawn before its formula (issue 19).

A diagram differs from a result plot: it shows how something works (a graphical model, a
pipeline, the shapes of a layer), not what a run measured. Each chapter's diagrams live in one
module here, named after the chapter's subject, and every function returns a matplotlib
``Figure`` built without ``pyplot`` (so nothing is shown twice and no figure leaks):

- ``core``          the drawing kit: a canvas in inches, boxes, arrows, tensors, one palette,
                    and :func:`core.show`, which displays a figure as SVG (text drawn as paths:
                    no font or script is fetched when the page is read);
- ``probability``   chapter 1: likelihood as heights of a density, entropy + KL;
- ``optimisation``  chapter 2: optimiser paths on one contour plot, the training loop, weight decay;
- ``vae``           chapter 3: the graphical model, encoder → reparameterisation → decoder;
- ``gan``           chapter 4: the GAN game loop (who sees what, where gradients flow), the
                    generator's saturating and non-saturating losses;
- ``diffusion``     chapter 5: forward and reverse chains, the ε/x₀/v/score geometry, the NFE
                    ladder of a sampler;
- ``attention``     chapter 6: scaled dot-product and multi-head attention with shapes, the
                    causal mask, a transformer block;
- ``pretraining``   chapter 7: BPE merges replayed on a word, bits per byte as a scale;
- ``finetuning``    chapter 8: chat template → tokens → labels with the −100 positions, LoRA;
- ``router``        chapters 9 and 10: the router pipeline with LoRA, the adversarial-training
                    loop, continual learning with replay and EWC;
- ``token_costs``   chapter 11: the KV cache per layer, a request's cost from seconds to dollars;
- ``verdict``       chapter 12: the cost–benefit flow to a decision, the verdict's questions.

Numbers and shapes that a diagram shows are arguments (a model's config, a tokenised
conversation, an optimiser's iterates) or are computed here from them, never typed into a
picture. A chapter shows a diagram from a hidden-input code cell that marks its output as a
figure with the ``diagram`` class, a caption and alt text (README, "Adding a chapter").
"""

from aigc_lib.diagrams.core import show, to_svg

__all__ = ["show", "to_svg"]
