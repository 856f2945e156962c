"""ce.torch vs F.cross_entropy: 4096 x 32000 float32, forward + backward."""
import resource, statistics, sys, time
import torch, torch.nn.functional as F
import ce.torch as ct

N, C = 4096, 32000
which = sys.argv[1]
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
