# Appendix B.1 corrected: fp16 mixed precision with torch.amp (runs on a GPU, and on a CPU for testing).
import torch
import torch.nn as nn
import torch.optim as optim

device = "cuda" if torch.cuda.is_available() else "cpu"

# A small data set to stand in for yours: 10 features, 5 classes
features = torch.randn(256, 10)
labels = features[:, :5].argmax(dim=1)
train_loader = torch.utils.data.DataLoader(
    torch.utils.data.TensorDataset(features, labels), batch_size=32, shuffle=True
)

# Define the model: it returns logits, because CrossEntropyLoss applies log-softmax itself
model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 5))
model.to(device)

# Set up the optimizer
optimizer = optim.Adam(model.parameters(), lr=0.001)

# Set up the loss function
criterion = nn.CrossEntropyLoss()

# Loss scaling for the fp16 gradients (torch.cuda.amp is deprecated: torch.amp takes the device)
scaler = torch.amp.GradScaler(device)

# Train the model
for epoch in range(10):
    for inputs, targets in train_loader:
        inputs, targets = inputs.to(device), targets.to(device)

        # The forward pass and the loss under autocast: the linear layers run in fp16
        with torch.autocast(device, dtype=torch.float16):
            outputs = model(inputs)
            loss = criterion(outputs, targets)

        # Backpropagation, outside autocast, from the scaled loss; clear the last step's gradients first
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
