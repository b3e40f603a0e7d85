"""Models built in the book, one module each (VAE, GAN, diffusion and flow matching, GPT,
LoRA), imported explicitly: ``from aigc_lib.models import gpt``."""
