"""Tiny random HF models of every supported family (2 layers, hidden 64, fixed seed) + a tokenizer."""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

import torch

VOCAB = 320
WORDS = (
    "the of and to in is was for on as with by at from that which this are were be has had an it "
    "river city music history science model layer weight sparse tensor engine kernel memory token "
    "north south east west king queen war peace art paint song film book star planet ocean forest"
).split()


def corpus_text(n_words: int = 20000, seed: int = 0) -> str:
    rng = random.Random(seed)
    out, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if i % 12 == 11:
            out.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(out)


@lru_cache(maxsize=1)
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([corpus_text(3000, 1)], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")


def config(family: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config}[family]
        extra = {"head_dim": 16} if family == "qwen3" else {}
        return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, **extra, **common)
    if family == "gemma3":
        return tf.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=16,
                                   **common)
    if family == "opt":
        return tf.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=256, word_embed_proj_dim=64, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, n_inner=128, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                max_position_embeddings=256, rotary_pct=0.5, **common)
    if family == "phi3":
        return tf.Phi3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256, original_max_position_embeddings=256,
                             **common)
    raise KeyError(family)


FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma3", "opt", "gpt2", "gpt_neox", "phi3")


def build(family: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = config(family)
    model = AutoModelForCausalLM.from_config(cfg)
    # Give input channels unequal scales, as real activations have, so methods differ measurably.
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if p.dim() == 2 and "emb" not in name and "wte" not in name and "wpe" not in name:
                p.mul_(1 + 0.5 * torch.rand(p.shape, generator=g))
    return model.eval()


def save(family: str, path: Path, seed: int = 0) -> Path:
    model = build(family, seed)
    model.save_pretrained(path)
    tokenizer().save_pretrained(path)
    return path
