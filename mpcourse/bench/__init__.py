"""Measure what mixed precision buys on this machine, correctly, and predict it.

- :mod:`~mpcourse.bench.timing`: timing that survives asynchronous GPUs, first-call costs and
  noise (``torch.utils.benchmark``, CUDA events), the classic mistakes for comparison, peak memory;
- :mod:`~mpcourse.bench.sweeps`: matrix products by precision (fp32, TF32, fp16, bf16, fp8 through
  ``torch._scaled_mm``) and size, an elementwise op, memory bandwidth;
- :mod:`~mpcourse.bench.datasheets`: vendor peaks (dense) of T4, L4, A100, H100, H200;
- :mod:`~mpcourse.bench.roofline`: arithmetic intensity, balance points, predicted speed-ups;
- :mod:`~mpcourse.bench.flops`: model FLOPs (``FlopCounterMode``, ``6 N T``) and MFU;
- :mod:`~mpcourse.bench.trainstep`: training-step throughput, memory and MFU per precision recipe,
  through :func:`mpcourse.train.train`;
- :mod:`~mpcourse.bench.profiling`: one step under ``torch.profiler`` as a table of kernels and dtypes;
- :mod:`~mpcourse.bench.figures`: plotly figures of sweeps and rooflines that work without a kernel;
- :mod:`~mpcourse.bench.results`: results stored as data, and the reference results shipped with the course;
- :mod:`~mpcourse.bench.checks`: what every stored result must show (datasheets, emulation, the roofline),
  checked record by record, GPU records included as soon as one is stored;
- :mod:`~mpcourse.bench.commands`: ``mpcourse bench matmul`` and ``mpcourse bench train``.
"""
