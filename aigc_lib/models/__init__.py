"""Models built in the book, one module each (VAE, GAN, GPT, LoRA), imported explicitly:
``from aigc_lib.models import gpt``."""
