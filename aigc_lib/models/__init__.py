"""Models built in the book, one module each (VAE, GAN, diffusion and flow matching, GPT,
the Llama-style block, n-grams, LoRA), imported explicitly: ``from aigc_lib.models import gpt``."""
