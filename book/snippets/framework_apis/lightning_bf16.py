# Lightning: one argument of the Trainer chooses the precision; it runs autocast (and a scaler for fp16).
import lightning as L
import torch
from torch import nn


class Classifier(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


data = torch.utils.data.TensorDataset(torch.randn(256, 64), torch.randint(0, 8, (256,)))
trainer = L.Trainer(
    precision="bf16-mixed",  # or "16-mixed" (fp16 with a GradScaler), "transformer-engine" (fp8)
    gradient_clip_val=1.0,  # Lightning unscales before clipping under "16-mixed"
    accumulate_grad_batches=2,
    max_steps=4,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)
trainer.fit(Classifier(), torch.utils.data.DataLoader(data, batch_size=32))
