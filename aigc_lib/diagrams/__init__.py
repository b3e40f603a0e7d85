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
- ``finetuning``    chapter 8: chat template → tokens → labels with the −100 positions, LoRA.

Numbers and shapes that a diagram shows are arguments (a model's config, a tokenised
conversation, an optimiser's iterates) or are computed here from them, never typed into a
picture. A chapter shows a diagram from a hidden-input code cell that marks its output as a
figure with the ``diagram`` class, a caption and alt text (README, "Adding a chapter").
"""

from aigc_lib.diagrams.core import show, to_svg

__all__ = ["show", "to_svg"]
