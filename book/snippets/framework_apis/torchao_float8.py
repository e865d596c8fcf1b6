# torchao: swap nn.Linear layers for Float8Linear (fp8 GEMMs with per-tensor or per-row scales).
import torch
from torch import nn
from torchao.float8 import Float8LinearConfig, convert_to_float8_training

device = "cuda" if torch.cuda.is_available() else "cpu"
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)).to(device)


def eligible(module: nn.Module, name: str) -> bool:
    # first and last layers stay in bf16; fp8 GEMMs need dimensions divisible by 16
    return name not in ("0", "4") and module.in_features % 16 == 0 and module.out_features % 16 == 0


config = Float8LinearConfig.from_recipe_name("tensorwise")  # or "rowwise", "rowwise_with_gw_hp"
convert_to_float8_training(model, config=config, module_filter_fn=eligible)
# On a GPU, torch.compile(model) fuses the casts; fp8 tensor cores need compute capability 8.9+.
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)  # updates fp32 master weights

x = torch.randn(32, 64, device=device)
y = torch.randint(0, 8, (32,), device=device)
with torch.autocast(device, dtype=torch.bfloat16):  # the layers that stay high precision: bf16
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y)
loss.backward()  # no loss scaler: the scales are recomputed every step
optimizer.step()
optimizer.zero_grad()
