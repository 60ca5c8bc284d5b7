"""Recovery: sparsity-aware distillation of a pruned model from its dense teacher, masks fixed.

``masks.py`` keeps every pruned weight exactly zero (gradients and updates masked), ``losses.py``
holds the pure distillation losses, ``train.py`` the loop (torch AdamW, transformers' cosine
schedule with warm-up, gradient accumulation and checkpointing, bf16 autocast), ``checkpoint.py``
atomic checkpoints for a bit-identical ``--resume``, and ``api.py`` the job behind
``sparse-trt recover``.
"""
