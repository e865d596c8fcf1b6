# NVTX ranges name parts of a step on Nsight Systems' timeline; cudaProfilerStart/Stop bound what it
# records (with `nsys profile --capture-range=cudaProfilerApi`). Outside nsys they cost next to nothing.
import torch
from step import device, train_step

if device == "cuda":
    for _ in range(3):
        train_step()  # warm-up, outside the capture
    torch.cuda.synchronize()
    torch.cuda.profiler.start()  # cudaProfilerStart: nsys starts recording here
    for i in range(5):
        with torch.cuda.nvtx.range(f"step {i}"):
            train_step()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()  # cudaProfilerStop
    with torch.autograd.profiler.emit_nvtx():  # one NVTX range per operator, forward and backward
        train_step()
else:
    print("NVTX and Nsight Systems need a CUDA GPU; on a CPU, torch.profiler's record_function names ranges")
