# Hugging Face Accelerate: Accelerator(mixed_precision=...) wraps the model's forward in autocast.
import torch
from accelerate import Accelerator
from torch import nn

accelerator = Accelerator(mixed_precision="bf16", gradient_accumulation_steps=2)  # or "fp16", "fp8"
model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = torch.utils.data.TensorDataset(torch.randn(256, 64), torch.randint(0, 8, (256,)))
loader = torch.utils.data.DataLoader(data, batch_size=32)
model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

for x, y in loader:
    with accelerator.accumulate(model):  # steps the optimizer every 2 batches
        loss = nn.functional.cross_entropy(model(x), y)  # the forward pass ran under bf16 autocast
        accelerator.backward(loss)  # scales the loss when mixed_precision="fp16"
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), 1.0)  # unscales first
        optimizer.step()
        optimizer.zero_grad()
