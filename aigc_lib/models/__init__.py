"""Models built in the book, one module each (VAE, GAN, GPT, the Llama-style
block, n-grams, LoRA), imported explicitly:
``from aigc_lib.models import gpt``."""
