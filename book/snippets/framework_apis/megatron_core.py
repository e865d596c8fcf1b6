# Megatron-Core: precision is set in its config dataclasses (fp8 runs through Transformer Engine).
import torch
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig
from megatron.core.transformer import TransformerConfig

model_config = TransformerConfig(
    num_layers=24,
    hidden_size=2048,
    num_attention_heads=16,
    bf16=True,  # bf16 mixed precision
    params_dtype=torch.bfloat16,  # the model's weights; the optimizer keeps fp32 copies
    fp8="hybrid",  # E4M3 activations and weights, E5M2 gradients (None: no fp8)
    fp8_recipe="tensorwise",  # or "delayed", "mxfp8" (Blackwell), "blockwise"
    first_last_layers_bf16=True,  # keep the first and last layers out of fp8
)
optimizer_config = OptimizerConfig(
    optimizer="adam",
    lr=3e-4,
    bf16=True,
    params_dtype=torch.bfloat16,
    clip_grad=1.0,
    # with fp16=True instead: loss_scale=None means dynamic loss scaling from initial_loss_scale
)
ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True)  # reduce gradients in fp32

# The same choices as flags of Megatron-LM's training scripts (pretrain_gpt.py):
FLAGS = "--bf16 --fp8-format hybrid --fp8-recipe tensorwise --first-last-layers-bf16 --clip-grad 1.0 --accumulate-allreduce-grads-in-fp32"
