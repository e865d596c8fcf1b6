# torch.profiler: which operators (and, on a GPU, kernels) a step runs, how long each takes, in which dtype.
from step import device, train_step
from torch.profiler import ProfilerActivity, profile, record_function

activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
for _ in range(3):  # warm up first: the first steps allocate memory and pick kernels
    train_step()
with profile(activities=activities, record_shapes=True) as prof:
    for _ in range(3):
        with record_function("train_step"):  # a named range in the table and the trace
            train_step()

sort = "cuda_time_total" if device == "cuda" else "self_cpu_time_total"
table = prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=8, max_name_column_width=30)
print(table)
prof.export_chrome_trace("step_trace.json")  # open in https://ui.perfetto.dev or chrome://tracing
