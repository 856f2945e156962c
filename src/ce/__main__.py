"""`python -m ce <command>`: score (ce._cli) or bench (ce._bench)."""
import sys

USAGE = """usage: python -m ce <command> [options]
       python -m ce --version

commands:
  score   loss, perplexity and top-k accuracy of logits against labels (.npy, .npz,
          directories of shards), streamed in bounded memory; with no files, a
          built-in example                        python -m ce score --help
  bench   time ce against NumPy, PyTorch and JAX on this machine (--quick: about 2 minutes;
          --sweep: ns per logit for C from 2 to 262144)  python -m ce bench --help
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.stderr.write(USAGE)
        return 2
    command, rest = argv[0], argv[1:]
    if command in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0
    if command in ("-V", "--version"):
        from . import __version__
        sys.stdout.write(f"ce {__version__}\n")
        return 0
    if command == "score":
        from ._cli import main as run
    elif command == "bench":
        from ._bench import main as run
    else:
        sys.stderr.write(f"python -m ce: unknown command {command!r} (commands: score, bench)\n")
        return 2
    return run(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
