"""``python -m export train|eval|card|baselines|background-embeddings|download``.

Each command lives in its own module and is imported only when chosen, so ``--help``
and the commands that need no TensorFlow never load it. A
:class:`~detector.errors.DetectorError` prints one line and exits with its code.
"""

from __future__ import annotations

import importlib
import sys

from export._cli import run_command

COMMANDS = {
    "train": ("export.train", "the shipped recipe: AudioSet-pretrained mn04 trunk + recurrent "
              "head, AudioSet gate, thresholds; cross-validation by fold and kind groups, the "
              "final model (shared data and/or your own folder-per-class data)"),
    "eval": ("export.stream_eval", "held-out clips in one long stream through the daemon's "
             "pipeline: event recall, clip accuracy, wrong labels, delay, false alarms per hour"),
    "card": ("export.card", "the model card of a trained model, from its measurements"),
    "baselines": ("export.baselines", "seed baselines for study: feature-MLP, log-mel CNN and "
                  "the from-scratch CNN+LSTM on UrbanSound8K folds"),
    "background-embeddings": ("export.background", "background embeddings of everyday sounds "
                              "for custom labels (detector/models/background-<version>.npz)"),
    "download": ("export.datasets_download", "download UrbanSound8K or ESC-50 into a folder "
                 "(resumable, checksummed, safe extraction)"),
}
ALIASES = {"pretrained": "train", "stream-eval": "eval"}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(["usage: python -m export COMMAND [options]   (COMMAND --help for more)",
                      "", "commands:"] + [f"  {name:<{width}}  {text}"
                                          for name, (_, text) in COMMANDS.items()])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name = argv[0]
    if name in ALIASES:
        print(f"`python -m export {name}` is now `python -m export {ALIASES[name]}`",
              file=sys.stderr)
        name = ALIASES[name]
    if name not in COMMANDS:
        print(f"python -m export: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"python -m export {name}: {module_name} is unavailable ({exc}); install the "
              "training extra: pip install -e '.[train]'", file=sys.stderr)
        return 2
    if not hasattr(module, "add_arguments"):
        return int(module.main(argv[1:]))
    return run_command(module, f"python -m export {name}", argv[1:], description=summary)


if __name__ == "__main__":
    sys.exit(main())
