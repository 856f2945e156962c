"""ce.torch vs F.cross_entropy, float32, forward + backward.

    python tools/bench_torch_adapter.py {torch,ce} {time,saved,peak}   4096 x 32000: time, memory
    python tools/bench_torch_adapter.py sizes [NxC ...]                 interleaved, per size

`sizes` runs F.cross_entropy, ce.torch.cross_entropy and a bare torch.autograd.Function
(saves the input, returns zeros: autograd's own floor) one after the other for every
repetition, in one process, and prints medians of the wall time and of the thread's CPU
time. Set OMP_NUM_THREADS and CE_BENCH_THREADS (torch's) to compare at a thread count.
"""
import os, resource, statistics, sys, time
import torch, torch.nn.functional as F
import ce.torch as ct

SIZES = [(64, 10), (256, 100), (64, 1000), (1000, 1000), (64, 32000),
         (104858, 10), (1049, 1000), (33, 32000)]   # the last three: 2^20 logits


class _Bare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x)
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.zeros_like(x), None


def sizes(shapes):
    if "CE_BENCH_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["CE_BENCH_THREADS"]))
    fns = {"torch": F.cross_entropy, "ce": ct.cross_entropy, "bare": _Bare.apply}
    print(f"fwd+bwd, float32, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; medians in us")
    for n, c in shapes:
        torch.manual_seed(0)
        x = torch.randn(n, c).requires_grad_()
        y = torch.randint(0, c, (n,))
        reps = max(7, min(1000, int(3e7 / (n * c))))
        wall = {k: [] for k in fns}
        cpu = {k: [] for k in fns}
        for _ in range(reps):
            for k, f in fns.items():
                x.grad = None
                c0, t0 = time.thread_time(), time.perf_counter()
                f(x, y).backward()
                wall[k].append(time.perf_counter() - t0)
                cpu[k].append(time.thread_time() - c0)
        for label, d in (("wall", wall), ("cpu", cpu)):
            m = {k: statistics.median(v[1:]) * 1e6 for k, v in d.items()}
            print(f"{n:>7} x {c:<6} {label:4} torch {m['torch']:10.1f}  ce {m['ce']:10.1f}  "
                  f"bare {m['bare']:9.1f}  torch/ce {m['torch'] / m['ce']:5.2f}x  "
                  f"ce-bare {m['ce'] - m['bare']:8.1f}  ({reps} reps)", flush=True)


which = sys.argv[1]
if which == "sizes":
    sizes([tuple(map(int, a.split("x"))) for a in sys.argv[2:]] or SIZES)
    sys.exit()
N, C = 4096, 32000
fn = {"torch": F.cross_entropy, "ce": ct.cross_entropy}[which]
torch.manual_seed(0)
x = torch.randn(N, C).requires_grad_()
y = torch.randint(0, C, (N,))

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

if sys.argv[2] == "saved":
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t), t)[1], lambda t: t):
        loss = fn(x, y)
    shares = lambda t: t.untyped_storage().data_ptr() in (x.untyped_storage().data_ptr(), y.untyped_storage().data_ptr())
    extra = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved if not shares(t)}.values())
    print(f"{which}: saved {[tuple(t.shape) for t in saved]}, new bytes held for backward {extra}")
    r0 = rss_mb(); loss.backward(); x.grad = None; del loss
    base = rss_mb(); loss = fn(x, y); held = rss_mb() - base
    loss.backward(); peak = rss_mb()
    print(f"{which}: RSS held between fwd and bwd {held:.1f} MiB, RSS after bwd (grad kept) +{peak - base:.1f} MiB")
elif sys.argv[2] == "time":
    ts = []
    for i in range(7):
        x.grad = None
        t0 = time.perf_counter(); fn(x, y).backward(); ts.append(time.perf_counter() - t0)
    fw = []
    with torch.no_grad():
        for i in range(7):
            t0 = time.perf_counter(); fn(x, y); fw.append(time.perf_counter() - t0)
    print(f"{which}: fwd+bwd median {statistics.median(ts[1:])*1e3:.1f} ms (min {min(ts[1:])*1e3:.1f}); fwd only median {statistics.median(fw[1:])*1e3:.1f} ms")
if sys.argv[2] == "peak":
    base = rss_mb()
    loss = fn(x, y); loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{which}: peak RSS during fwd+bwd above the inputs: +{peak - base:.0f} MiB (the gradient itself is 500 MiB)")
