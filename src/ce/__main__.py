"""python -m ce {score,bench} ...: the command line."""
import sys

USAGE = """usage: python -m ce COMMAND [options]

commands:
  score   score logits against labels (.npy/.npz/shard directories); no arguments: a built-in example
  bench   time ce against NumPy, PyTorch and JAX on this machine (--quick: about 30 s)

python -m ce COMMAND --help shows the command's options."""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from ._bench import main as run
    elif command == "score":
        from ._cli import main as run
    else:
        print(f"python -m ce: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
