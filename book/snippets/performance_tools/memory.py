# Memory: on a GPU, record every allocation and save a snapshot for the memory visualiser;
# on a CPU, the profiler's memory columns say which operators allocated how much.
import torch
from step import device, train_step
from torch.profiler import ProfilerActivity, profile

if device == "cuda":
    torch.cuda.memory._record_memory_history(max_entries=100_000)  # allocations, frees, their stacks
    for _ in range(3):
        train_step()
    torch.cuda.memory._dump_snapshot("memory_snapshot.pickle")  # drag onto https://pytorch.org/memory_viz
    torch.cuda.memory._record_memory_history(enabled=None)  # stop recording
    print(f"peak allocated: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
else:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step()
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=6, max_name_column_width=30))
