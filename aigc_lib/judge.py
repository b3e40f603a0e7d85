r"""The digit judge: one classifier, trained on the training digits only, that scores generated
digits for chapters 3, 4 and 5.

A generator of images has no likelihood to compare (a GAN) or a likelihood that says little about
how its samples look (a VAE, a diffusion model). Chapter 4 therefore scores samples through the
features of a classifier, as the Fréchet Inception Distance (Heusel et al. 2017) does with
an ImageNet network: :func:`frechet_to_heldout` fits a Gaussian to the judge's 64 features of
each set of images and returns the Fréchet distance between the two Gaussians
(:func:`aigc_lib.metrics.frechet_distance`). The same judge tells which digit a conditional
sample shows (:meth:`DigitJudge.label_accuracy`).

The judge's features are *in-sample* on the training images, so a fair yardstick never uses
them: the held-out test split is cut once into two stratified halves, ``A`` and ``B``. Every
distance is measured against half ``B`` from the same number of images (the estimate is biased
upwards, by an amount that depends on the sample sizes), and the **floor** is the distance of
half ``A`` — real, held-out digits that the judge has never seen — to half ``B``.

Training takes a few seconds on a CPU and is deterministic for a given seed, so every chapter
trains the same judge instead of sharing a file. ``dataset="mnist"`` (the online-only option of
chapter 4, 28×28 images) trains the same kind of judge on MNIST and cuts MNIST's test split
into its halves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aigc_lib import checks, data, metrics
from aigc_lib.training import fit

PIXELS = 64      # 8×8 digits, flattened
FEATURES = 64    # width of the judge's last hidden layer
DATASETS = {"digits": PIXELS, "mnist": 28 * 28}   # dataset -> pixels per image


def _dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {tuple(DATASETS)}, got {dataset!r}")
    return dataset


def _load(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (data.mnist if _dataset(dataset) == "mnist" else data.digits)(split)


@dataclass
class DigitJudge:
    """A trained digit classifier: ``features`` (images → 64 features) and ``head``
    (features → 10 logits). Use :func:`train_judge` to make one."""

    features: nn.Sequential
    head: nn.Linear
    test_accuracy: float
    dataset: str = "digits"

    def __post_init__(self) -> None:
        _dataset(self.dataset)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        checks.tensor("images", images, floating=True, ndim=2)
        pixels = DATASETS[self.dataset]
        if images.shape[1] != pixels:
            raise ValueError(f"images must be (N, {pixels}) flattened {self.dataset} images in "
                             f"[0, 1], got shape {tuple(images.shape)}")
        return images.float().cpu()

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The judge's ``(N, 64)`` features of ``(N, 64)`` images."""
        return self.features(self._images(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The digit (0–9) the judge sees in each image."""
        return self.head(self.embed(images)).argmax(dim=1)

    def label_accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of ``images`` that the judge reads as their intended ``labels`` (how well a
        conditional generator obeys its condition)."""
        checks.tensor("labels", labels, ndim=1)
        if len(labels) != len(images):
            raise ValueError(f"labels must have one entry per image, got {len(labels)} labels "
                             f"for {len(images)} images")
        return (self.predict(images) == labels.cpu()).double().mean().item()


def train_judge(seed: int = 0, epochs: int = 30, dataset: str = "digits") -> DigitJudge:
    """Train the judge on the training digits (``data.digits("train")``, or MNIST's training
    split with ``dataset="mnist"``) with Adam, ``epochs`` epochs of batches of 64; its
    initialisation and data order come from ``seed`` alone (the global random state is left as
    it was)."""
    checks.positive_number("seed", seed, integer=True, allow_zero=True)
    checks.positive_number("epochs", epochs, integer=True)
    x_train, y_train = _load(dataset, "train")
    x_test, y_test = _load(dataset, "test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = nn.Sequential(nn.Linear(DATASETS[dataset], 128), nn.ReLU(),
                                 nn.Linear(128, FEATURES), nn.ReLU())
        head = nn.Linear(FEATURES, 10)
        model = nn.Sequential(features, head)
        fit(model, (x_train, y_train), epochs=epochs, batch_size=64, seed=seed, device="cpu",
            loss_fn=lambda m, x, y: nn.functional.cross_entropy(m(x), y),
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), progress=False)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    return DigitJudge(features, head, accuracy, dataset)


def heldout_halves(dataset: str = "digits"
                   ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """The test digits cut into two fixed, stratified halves ``A`` and ``B`` (180 images each;
    5,000 for MNIST): ``((x_a, y_a), (x_b, y_b))``. Within each digit class, test images
    alternate between A and B in the order of the split."""
    x, y = _load(dataset, "test")
    to_a = torch.zeros(len(y), dtype=torch.bool)
    for digit in range(10):
        members = (y == digit).nonzero().flatten()
        to_a[members[::2]] = True
    return (x[to_a], y[to_a]), (x[~to_a], y[~to_a])


def frechet_to_heldout(judge: DigitJudge, images: torch.Tensor) -> float:
    """Fréchet distance between the judge's features of ``images`` and of held-out half ``B``,
    using as many of ``images`` as B has (the first ones), so every distance in a chapter is
    computed from equal sample sizes and compares with :func:`floor`."""
    if not isinstance(judge, DigitJudge):
        raise TypeError(f"judge must be a DigitJudge, got {type(judge).__name__}")
    _, (x_b, _) = heldout_halves(judge.dataset)
    if len(images) < len(x_b):
        raise ValueError(f"images must hold at least {len(x_b)} images (the size of held-out "
                         f"half B), got {len(images)}")
    return metrics.frechet_distance(judge.embed(images[:len(x_b)]), judge.embed(x_b))


def floor(judge: DigitJudge) -> float:
    """The distance of real held-out digits (half ``A``) to half ``B``: what a generator that
    draws from the data distribution itself would score, up to sampling noise."""
    (x_a, _), _ = heldout_halves(judge.dataset)
    return frechet_to_heldout(judge, x_a)
