# A profiler schedule over a longer run: skip 1 step, warm up 1, record 3; write one trace per cycle.
from step import device, train_step
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
with profile(
    activities=activities,
    schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
    on_trace_ready=tensorboard_trace_handler("profiles", worker_name="worker0"),  # profiles/*.pt.trace.json
) as prof:
    for _ in range(6):
        train_step()
        prof.step()  # tells the schedule that a step ended
