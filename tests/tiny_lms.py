"""Tiny random causal language models saved with a tokenizer to a folder, as a Hub checkpoint
would be: a GPT-2 (no chat template: the book's is used) and a Llama with a ChatML chat template
of its own, whose end-of-turn token is its eos (as Qwen's instruct models). Built from configs,
offline, in a fraction of a second."""
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast

from aigc_lib import data

PAIRS = [("My mouse is not responding.", "Try another USB port."),
         ("can you write a loop in Python?", "for i in range(3):\n    print(i)"),
         ("I forgot my password.", "Use the password reset option."),
         ("What is AI?", "The science of making machines act intelligently.")]
CHATML = ("{%- for message in messages -%}"
          "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
          "{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}")
# The same template with generation markers, so that transformers can mark assistant tokens.
CHATML_MARKED = CHATML.replace(
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}",
    "{%- if message['role'] == 'assistant' -%}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>\n' }}{% endgeneration %}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>\n' }}{%- endif -%}")


def _tokenizer(chatml: bool) -> PreTrainedTokenizerFast:
    text = " ".join(q + " " + a for q, a in PAIRS) * 5 + data.python_docs("train")[:20_000]
    extra = {}
    if chatml:
        extra = dict(additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                     eos_token="<|im_end|>", pad_token=data.END_OF_TEXT)
    tok = PreTrainedTokenizerFast(tokenizer_object=data.train_bpe(text, 320),
                                  bos_token=data.END_OF_TEXT, unk_token=data.END_OF_TEXT,
                                  model_max_length=256,
                                  **({"eos_token": data.END_OF_TEXT} | extra))
    if chatml:
        tok.chat_template = CHATML
    return tok


def save_tiny(folder, kind: str, seed: int = 0):
    """Save a tiny random ``kind`` ("gpt2" or "llama") model and its tokenizer to ``folder``."""
    tok = _tokenizer(chatml=kind == "llama")
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2,
                            n_head=2, bos_token_id=0, eos_token_id=tok.eos_token_id,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=256, bos_token_id=0,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
