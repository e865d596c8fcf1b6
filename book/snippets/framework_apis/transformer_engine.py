# Transformer Engine: te modules compute in fp8 (or fp4) inside te.autocast, with a recipe for the scales.
import torch
import transformer_engine.pytorch as te
from transformer_engine.common.recipe import (
    DelayedScaling,
    Float8CurrentScaling,
    Format,
    MXFP8BlockScaling,
    NVFP4BlockScaling,
)

RECIPES = {
    "current": Float8CurrentScaling(fp8_format=Format.HYBRID),  # per-tensor scales from this step's amax
    "delayed": DelayedScaling(fp8_format=Format.HYBRID, amax_history_len=1024, amax_compute_algo="max"),
    "mxfp8": MXFP8BlockScaling(),  # one power-of-two scale per 32 values: compute capability 10.0+
    "nvfp4": NVFP4BlockScaling(),  # 4-bit values, an E4M3 scale per 16: compute capability 10.0+
}

layer = te.Linear(1024, 1024, params_dtype=torch.float32)  # fp32 master weights, on the GPU
x = torch.randn(32, 1024, device="cuda")
with torch.autocast("cuda", dtype=torch.bfloat16), te.autocast(enabled=True, recipe=RECIPES["current"]):
    y = layer(x)  # an fp8 GEMM (compute capability 8.9+); outside te.autocast the layer runs bf16
y.float().pow(2).mean().backward()
